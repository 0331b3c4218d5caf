"""The model registry: `<state_dir>/models/<name>/<version>/manifest.json` plus the model's files.

Registration is atomic: files are written into a hidden staging folder, the manifest last, and the
folder is renamed into place. A crash mid-way leaves only a staging folder, which is never listed and is
swept on the next open.

Example::

    reg = Registry(Path(".kdgate"))
    with reg.stage("classify-student") as staging:
        (staging.path / "model.onnx").write_bytes(...)
        staging.commit(manifest)          # -> classify-student@<next version>
"""

from __future__ import annotations

import builtins
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from durablefs import fsync_dir, fsync_file, write_json

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"


class RegistryError(Exception):
    """A model reference that cannot be resolved or a manifest that does not validate."""


class Role(StrEnum):
    """What a model is to its task: the reference (teacher) or a distilled candidate (student)."""

    TEACHER = "teacher"
    STUDENT = "student"


class TaskKind(StrEnum):
    """What a task does: label texts, or generate text. The bundled tasks are named after their kind."""

    CLASSIFY = "classify"
    GENERATE = "generate"


# A task's name is in URLs (/classify/<task>), metric labels and folder names (the shadow log's).
TASK_NAME = r"^[a-z][a-z0-9_-]{0,39}$"


def student_name(task: str) -> str:
    """The registry name of the students distilled for a task.

    >>> student_name("classify"), student_name("topics")
    ('classify-student', 'topics-student')
    """
    return f"{task}-student"


class Lineage(BaseModel):
    model_config = ConfigDict(extra="allow")

    teacher: str | None = None  # ref of the teacher this model was distilled from
    parent: str | None = None  # previous student version it was warm-started from
    data: dict[str, Any] = Field(default_factory=dict)  # source, split, seed, sizes, time window
    recipe: dict[str, Any] = Field(default_factory=dict)  # name + hyper-parameters
    seed: int | None = None
    sweep: dict[str, Any] | None = None  # a student a sweep picked: the sweep's id, the point, the rule
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class Calibration(BaseModel):
    """Post-hoc temperature scaling of a classifier, fitted on the validation split; the runner divides
    the served logits by `temperature` before the softmax. ECE (top-label, `bins` equal-width bins) is
    on the test split, before and after scaling."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(gt=0)
    ece: float = Field(ge=0, le=1)
    calibrated_ece: float = Field(ge=0, le=1)
    bins: int = 15


class FaultSpec(BaseModel):
    """Faults that a `kind="fault"` model adds to the model it wraps (rehearsals and reliability tests)."""

    model_config = ConfigDict(extra="forbid")

    wraps: str  # ref of the real model
    latency_ms: float = Field(0.0, ge=0)  # added to every batch
    error_rate: float = Field(0.0, ge=0, le=1)  # share of batches that raise
    wrong_rate: float = Field(0.0, ge=0, le=1)  # share of inputs whose answer is permuted
    permutation: list[int] | None = None  # label i -> permutation[i]; default: shift by one
    seed: int = 0


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)
    task: str = Field(pattern=TASK_NAME)  # its name: `classify`, `generate`, or a user's (`topics`)
    task_kind: TaskKind  # given for a named task; a bundled task's is its name
    role: Role
    kind: Literal["model", "fault"] = "model"
    format: Literal["torch", "onnx", "fault"]
    files: list[str] = Field(default_factory=list)  # paths relative to the model folder
    labels: list[str] = Field(default_factory=list)
    tokenizer: str | None = None  # relative path of tokenizer.json
    max_length: int = 64
    lineage: Lineage = Field(default_factory=Lineage)
    metrics: dict[str, Any] = Field(default_factory=dict)
    fault: FaultSpec | None = None
    calibration: Calibration | None = None  # /classify: served probabilities use its temperature

    @model_validator(mode="before")
    @classmethod
    def _bundled_task_kind(cls, data: Any) -> Any:
        """Manifests written before tasks had names carry only `task`, which is then their kind."""
        if isinstance(data, dict) and data.get("task_kind") is None and data.get("task") in set(TaskKind):
            return {**data, "task_kind": data["task"]}
        return data

    @model_validator(mode="after")
    def _kind_names_are_theirs(self) -> Manifest:
        if self.task in set(TaskKind) and self.task != self.task_kind:
            raise ValueError(
                f"task {self.task!r} is the bundled {self.task} task, not a {self.task_kind} one"
            )
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        name, sep, version = ref.partition("@")
        if not sep or not name or not (version.isascii() and version.isdigit()) or int(version) < 1:
            raise RegistryError(
                f"model ref must look like name@version (e.g. classify-student@1), got {ref!r}"
            )
        return cls(name, int(version))

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


class Staging:
    """A hidden folder being filled with a new model version; `commit` publishes it atomically."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.path = registry.root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir(parents=True)
        self.committed: Manifest | None = None

    def commit(self, manifest: Manifest) -> Manifest:
        if manifest.name != self.name:
            raise RegistryError(f"manifest name {manifest.name!r} does not match staging name {self.name!r}")
        missing = [f for f in manifest.files if not (self.path / f).exists()]
        if missing:
            raise RegistryError(f"manifest lists files that were not written: {missing}")
        for written in self.path.rglob("*"):
            if written.is_file():
                fsync_file(written)
        write_json(self.path / MANIFEST, manifest.model_dump(mode="json"))
        target = self.registry.root / manifest.name / str(manifest.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise RegistryError(f"{manifest.ref} already exists in the registry")
        os.rename(self.path, target)  # atomic on one filesystem: the version appears whole or not at all
        fsync_dir(target.parent)
        self.committed = manifest
        return manifest


class Registry:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_staging()

    def _sweep_staging(self) -> None:
        for leftover in self.root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def list(self) -> list[Manifest]:
        manifests = []
        for path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            if path.parent.parent.name.startswith(".") or path.parent.name.startswith("."):
                continue
            manifests.append(self._read(path))
        return sorted(manifests, key=lambda m: (m.task, m.name, m.version))

    def _read(self, path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json(path.read_text())
        except ValueError as exc:
            raise RegistryError(f"invalid manifest {path}: {exc}") from exc

    def path(self, ref: str | ModelRef) -> Path:
        parsed = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        return self.root / parsed.name / str(parsed.version)

    def get(self, ref: str | ModelRef) -> Manifest:
        manifest_path = self.path(ref) / MANIFEST
        if not manifest_path.exists():
            raise RegistryError(f"no model {ref} in the registry at {self.root}")
        return self._read(manifest_path)

    def exists(self, ref: str | ModelRef) -> bool:
        return (self.path(ref) / MANIFEST).exists()

    def latest(self, name: str) -> Manifest | None:
        versions = [m for m in self.list() if m.name == name]
        return versions[-1] if versions else None

    def models_of(self, task: str, role: Role) -> builtins.list[Manifest]:  # `list` is a method here
        """The real models (not fault wrappers) of `task` in `role`, oldest version first."""
        found = [m for m in self.list() if m.task == task and m.role == role and m.kind == "model"]
        return sorted(found, key=lambda m: m.version)

    def latest_of(self, task: str, role: Role) -> Manifest | None:
        """The highest-versioned real model of `task` in `role`, or None."""
        found = self.models_of(task, role)
        return found[-1] if found else None

    def task_kinds(self) -> dict[str, TaskKind]:
        """Every task's kind by its name: the bundled tasks' (before any model of theirs exists) and
        those of the registered models."""
        return {**{kind.value: kind for kind in TaskKind}, **{m.task: m.task_kind for m in self.list()}}

    def next_version(self, name: str) -> int:
        latest = self.latest(name)
        return 1 if latest is None else latest.version + 1

    @contextmanager
    def stage(self, name: str) -> Iterator[Staging]:
        """A staging folder for a new version of `name`; removed unless committed."""
        staging = Staging(self, name)
        try:
            yield staging
        finally:
            if staging.committed is None:
                shutil.rmtree(staging.path, ignore_errors=True)
