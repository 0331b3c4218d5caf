"""The model registry: `<base>/<name>/<version>/manifest.json` plus the model's files, where `<base>` is
an fsspec URL (distill/objectstore.py): `<state_dir>/models` by default, any local path, or
`s3://bucket/prefix` shared by replicas on many machines.

Registration is atomic: files are written into a hidden staging folder, the manifest last. On a local
store the folder is renamed into place; on a remote one the version is claimed (a create-only PUT that
one of several racing writers wins), then the files are uploaded and the manifest last
(distill/modelfiles.py). A reader lists manifests only, so it never sees half a model. A crash mid-way
leaves only a staging folder, which is never listed and is swept on the next open.

A model's files are loaded from a local folder, `registry.path(ref)`: the store itself when it is
local, else the cache `<state_dir>/cache/models`, which a version is pulled into (every file checked
against the manifest's sha256) the first time it is asked for.

Example::

    reg = Registry(Path(".kdgate"))  # or Registry(Path(".kdgate"), "s3://models/kdgate")
    with reg.stage("classify-student") as staging:
        (staging.path / "model.onnx").write_bytes(...)
        staging.commit(manifest)          # -> classify-student@<next version>
"""

from __future__ import annotations

import builtins
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill.modelfiles import CLAIM, PULL_PREFIX, file_digests, publish, pull
from distill.modelfiles import MANIFEST as MANIFEST
from distill.modelfiles import CorruptObject as CorruptObject
from distill.modelfiles import MissingObject as MissingObject
from distill.modelfiles import RegistryError as RegistryError
from distill.objectstore import display, filesystem, is_local
from durablefs import fsync_dir, fsync_file, write_json

STAGING_PREFIX = ".staging-"


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
    # Progressive KD: the assistant whose logits it distilled on (teacher → via → this model); its
    # figures are still against `teacher`.
    via: str | None = None
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
    # Every file of the version but the manifest, by relative path: set on commit, checked on a pull.
    sha256: dict[str, str] = Field(default_factory=dict)
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
        self.path = registry.folder / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
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
        manifest = manifest.model_copy(update={"sha256": file_digests(self.path)})
        write_json(self.path / MANIFEST, manifest.model_dump(mode="json"))
        if self.registry.exists(manifest.ref):
            raise RegistryError(f"{manifest.ref} already exists in the registry")
        if not self.registry.local:
            location = self.registry.location(manifest.ref)
            publish(self.registry.fs, location, self.path, list(manifest.sha256), manifest.ref)
        # Local: the rename is the publication, atomic on one filesystem. Remote: the files just
        # uploaded are the cache entry of this version.
        target = self.registry.folder / manifest.name / str(manifest.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise RegistryError(f"{manifest.ref} already exists in {target}")
        os.rename(self.path, target)
        fsync_dir(target.parent)
        self.committed = manifest
        return manifest


class Registry:
    """The models of `url` (None: `<state_dir>/models`), loaded from `folder` on this machine."""

    def __init__(self, state_dir: Path, url: str | None = None) -> None:
        self.root = Path(state_dir) / "models"  # the default store; `root.parent` is the state dir
        self.fs, self.base = filesystem(url or str(self.root))
        self.local = is_local(self.fs)
        self.folder = Path(self.base) if self.local else Path(state_dir) / "cache" / "models"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._manifests: dict[tuple[str, int], tuple[Manifest, bytes]] = {}  # versions are immutable
        self._pulling = threading.Lock()
        self._sweep_staging()

    def __getstate__(self) -> dict[str, Any]:
        """Sent with every call to the shadow teacher's process: its lock stays here, and so does the
        manifest cache (the other process reads what it needs)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_pulling", "_manifests")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _pulling=threading.Lock(), _manifests={})

    def _sweep_staging(self) -> None:
        for prefix in (STAGING_PREFIX, PULL_PREFIX):
            for leftover in self.folder.glob(f"{prefix}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in self.folder.glob(f"*/{prefix}*"):
                shutil.rmtree(leftover, ignore_errors=True)

    @property
    def url(self) -> str:
        """Where the registry is, for messages."""
        return display(self.fs, self.base)

    def location(self, ref: str | ModelRef) -> str:
        """The folder of `ref` on the store (a path on `self.fs`)."""
        parsed = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        return f"{self.base}/{parsed.name}/{parsed.version}"

    def list(self) -> list[Manifest]:
        manifests = []
        for ref in self._versions_holding(MANIFEST):
            try:
                manifests.append(self._read(ref))
            except FileNotFoundError:  # removed since the listing
                continue
        return sorted(manifests, key=lambda m: (m.task, m.name, m.version))

    def _read(self, ref: ModelRef) -> Manifest:
        return self._entry(ref)[0]

    def _entry(self, ref: ModelRef) -> tuple[Manifest, bytes]:
        """The manifest of `ref` and its bytes, read once per process. FileNotFoundError if absent."""
        key = (ref.name, ref.version)
        entry = self._manifests.get(key)
        if entry is None:
            where = f"{self.location(ref)}/{MANIFEST}"
            raw = self.fs.cat_file(where)
            try:
                entry = (Manifest.model_validate_json(raw), raw)
            except ValueError as exc:
                raise RegistryError(f"invalid manifest {display(self.fs, where)}: {exc}") from exc
            self._manifests[key] = entry
        return entry

    def path(self, ref: str | ModelRef) -> Path:
        """The local folder holding `ref`'s files; from a remote store, pulled into the cache first
        (blocking; a MissingObject or CorruptObject error names the object at fault)."""
        parsed = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        target = self.folder / parsed.name / str(parsed.version)
        if self.local or (target / MANIFEST).exists():
            return target
        manifest, raw = self._entry_or_error(parsed)
        if manifest.files and not manifest.sha256:
            raise RegistryError(f"{parsed}: its manifest at {self.url} lists no sha256 to verify a pull by")
        with self._pulling:  # one download of a version at a time in this process
            where = display(self.fs, self.location(parsed))
            return pull(self.fs, self.location(parsed), str(parsed), manifest.sha256, raw, target, where)

    def _entry_or_error(self, ref: ModelRef) -> tuple[Manifest, bytes]:
        try:
            return self._entry(ref)
        except FileNotFoundError:
            raise RegistryError(f"no model {ref} in the registry at {self.url}") from None

    def get(self, ref: str | ModelRef) -> Manifest:
        return self._entry_or_error(ref if isinstance(ref, ModelRef) else ModelRef.parse(ref))[0]

    def exists(self, ref: str | ModelRef) -> bool:
        parsed = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        if (parsed.name, parsed.version) in self._manifests:
            return True
        where = f"{self.location(parsed)}/{MANIFEST}"
        self.fs.invalidate_cache(self.location(parsed))
        return bool(self.fs.exists(where))

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
        """One past the newest version of `name`, published or (on a remote store) claimed: a claim is
        a registration under way, or one that died mid-upload and left its number unused."""
        latest = self.latest(name)
        newest = 0 if latest is None else latest.version
        if not self.local:
            newest = max([newest, *(ref.version for ref in self._versions_holding(CLAIM, name))])
        return newest + 1

    def _versions_holding(self, leaf: str, name: str | None = None) -> Iterator[ModelRef]:
        """The versions (of `name`, or of every model) whose folder holds `leaf`, from one flat listing
        (on S3 one request per 1,000 objects) rather than a walk of every folder. s3fs caches listings,
        and another replica may have published since: the listing is always fresh."""
        folder = self.base if name is None else f"{self.base}/{name}"
        self.fs.invalidate_cache(folder)
        for path in sorted(self.fs.find(folder)):
            parts = path[len(self.base) :].strip("/").split("/")
            if len(parts) != 3 or parts[2] != leaf:
                continue
            model, version = parts[0], parts[1]
            if not model.startswith(".") and version.isascii() and version.isdigit():
                yield ModelRef(model, int(version))

    @contextmanager
    def stage(self, name: str) -> Iterator[Staging]:
        """A staging folder for a new version of `name`; removed unless committed."""
        staging = Staging(self, name)
        try:
            yield staging
        finally:
            if staging.committed is None:
                shutil.rmtree(staging.path, ignore_errors=True)
