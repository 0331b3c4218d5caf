"""The re-distillation run skeleton (`distill.runs`) with a tiny fake task: no models, no shadow log.

What both tasks rely on: the window end is pinned before training and a rerun resumes on it, every run
is recorded (registered or refused), only a candidate that passes the gate is registered, with its
lineage, and a window too small is refused before anything is left behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from distill.gate import Figures, GateConfig
from distill.registry import Lineage, Manifest, Registry, Role
from distill.runs import (
    INFLIGHT_FILE,
    PIN_MAX_AGE_S,
    RUNS_FILE,
    InterruptibleRun,
    Passed,
    RunContext,
    redistill_run,
    seed_recipe,
)

TEACHER, PARENT = "toy-teacher@1", "toy-student@1"


@dataclass(frozen=True)
class ToyRecipe:
    since: float | None = None
    until: float | None = None
    seed: int = 0
    checkpoint_every: int = 10
    threads: int = field(default_factory=torch.get_num_threads)  # the test process's, left as it is
    agreement: float = 0.9  # what the "trained" candidate agrees with the teacher on recent traffic
    gate: GateConfig = field(
        default_factory=lambda: GateConfig(min_agreement=0.5, max_kl=1.0, min_accuracy=0.0)
    )


@dataclass(frozen=True)
class ToySeedRecipe:
    dataset: str = "toy"
    seed: int = 0


@dataclass(frozen=True)
class ToyWindow:
    stamps: list[float]

    def __len__(self) -> int:
        return len(self.stamps)


@dataclass
class ToyTask:
    """A task whose "student" is the agreement it will reach; it writes one file as its export."""

    stamps: list[float]
    crash_in_training: bool = False
    trained: list[tuple[float, Path]] = field(default_factory=list)  # (pinned until, checkpoint) per run

    kind = "classify"
    student = "toy-student"
    recipe_name = "toy-redistill"
    seed_recipe_type = ToySeedRecipe
    min_records = 3
    records = "toy records"
    no_parent = "no toy student to re-distil"

    def window(self, run: RunContext[ToyRecipe], since: float | None, until: float) -> ToyWindow:
        return ToyWindow([s for s in self.stamps if (since is None or s >= since) and s < until])

    def targets(self, run: RunContext[ToyRecipe], window: ToyWindow) -> tuple[ToyWindow, dict[str, int]]:
        return window, {"shadow_window": len(window) - 1, "holdout": 1}

    def train(
        self, run: RunContext[ToyRecipe], targets: ToyWindow, checkpoint: Path
    ) -> tuple[float, dict[str, float]]:
        self.trained.append((run.until, checkpoint))
        if self.crash_in_training:
            raise RuntimeError("killed mid-training")
        return run.recipe.agreement, {"steps": 5.0, "resumed_from_step": 0.0}

    def parent_figures(self, run: RunContext[ToyRecipe], targets: ToyWindow) -> Figures:
        return Figures(0.8, 0.2, 0.7)

    def candidate(
        self, run: RunContext[ToyRecipe], student: float, targets: ToyWindow, folder: Path
    ) -> tuple[Path, Figures]:
        (folder / "weights.bin").write_text(str(student))
        return folder, Figures(student, 0.1, 0.7)

    def lineage_data(self, run: RunContext[ToyRecipe]) -> dict[str, object]:
        return {"seed_source": run.seed_recipe.dataset}

    def manifest(self, run: RunContext[ToyRecipe], candidate: Path, passed: Passed) -> Manifest:
        metrics = {"gate": passed.verdict.to_dict(), **passed.training}
        return toy_manifest(self.student, run.registry.next_version(self.student), passed.lineage, metrics)


def toy_manifest(
    name: str, version: int, lineage: Lineage, metrics: dict[str, Any] | None = None
) -> Manifest:
    role = Role.TEACHER if "teacher" in name else Role.STUDENT
    return Manifest(
        name=name,
        version=version,
        task="classify",
        role=role,
        format="onnx",
        files=["weights.bin"],
        lineage=lineage,
        metrics=metrics or {},
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A teacher and a first student built from it on the "bbc" seed data."""
    registry = Registry(tmp_path / "state")
    for name, lineage in [
        ("toy-teacher", Lineage()),
        ("toy-student", Lineage(teacher=TEACHER, recipe={"name": "hinton-kd", "dataset": "bbc", "seed": 3})),
    ]:
        with registry.stage(name) as staging:
            (staging.path / "weights.bin").write_text("w")
            staging.commit(toy_manifest(name, 1, lineage))
    return registry


def recent(n: int) -> list[float]:
    now = time.time()
    return [now - 100 + i for i in range(n)]


def runs_of(registry: Registry) -> list[dict[str, Any]]:
    path = registry.root.parent / "distill" / RUNS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pins_of(registry: Registry) -> dict[str, float]:
    path = registry.root.parent / "distill" / INFLIGHT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def quiet(_: str) -> None:
    pass


def test_a_candidate_that_passes_is_registered_with_its_lineage_and_recorded(registry: Registry) -> None:
    stamps = recent(10)
    recipe = ToyRecipe(since=stamps[0] - 1)
    result = redistill_run(ToyTask(stamps), registry, recipe, "unused", None, quiet)

    assert result.gate.passed and result.manifest is not None
    assert result.manifest.ref == "toy-student@2"
    manifest = registry.get("toy-student@2")
    assert manifest.lineage.parent == PARENT and manifest.lineage.teacher == TEACHER
    assert manifest.lineage.seed == recipe.seed
    assert manifest.lineage.data["source"] == "shadow" and manifest.lineage.data["seed_source"] == "bbc"
    window = manifest.lineage.data["window"]
    assert window == result.data
    assert list(result.data) == ["since", "until", "first_ts", "last_ts", "counts"]
    assert window["first_ts"] == stamps[0] and window["last_ts"] == stamps[-1]
    assert window["counts"] == {"shadow_window": 9, "holdout": 1}
    assert manifest.lineage.recipe["name"] == "toy-redistill" and manifest.lineage.recipe["agreement"] == 0.9
    assert manifest.lineage.recipe["seed_recipe"] == {"dataset": "bbc", "seed": 3}
    assert manifest.metrics["gate"]["passed"] is True and manifest.metrics["steps"] == 5.0

    (entry,) = runs_of(registry)
    assert (
        entry["task"] == "classify" and entry["parent"] == PARENT and entry["registered"] == "toy-student@2"
    )
    assert entry["gate"] == result.gate.to_dict() and entry["data"] == result.data
    assert entry["recipe"]["agreement"] == 0.9 and entry["seconds"] == result.seconds
    assert pins_of(registry) == {}  # the run ended: nothing left to resume


def test_a_refused_candidate_is_recorded_with_its_reasons_and_not_registered(registry: Registry) -> None:
    stamps = recent(10)
    result = redistill_run(ToyTask(stamps), registry, ToyRecipe(agreement=0.3), "unused", None, quiet)

    assert not result.gate.passed and result.manifest is None
    assert any("worse than the parent" in r for r in result.gate.reasons)
    assert [m.ref for m in registry.list() if m.role == Role.STUDENT] == [PARENT]
    assert not list(registry.root.glob(".staging-*"))  # the exported candidate is not left behind
    (entry,) = runs_of(registry)
    assert entry["registered"] is None and entry["gate"]["reasons"] == result.gate.reasons
    assert pins_of(registry) == {}


def test_a_run_killed_in_training_resumes_on_its_pinned_window_and_checkpoint(registry: Registry) -> None:
    stamps = recent(10)
    crashing = ToyTask(stamps, crash_in_training=True)
    with pytest.raises(RuntimeError):
        redistill_run(crashing, registry, ToyRecipe(), "unused", None, quiet)
    ((until, checkpoint),) = crashing.trained
    assert list(pins_of(registry).values()) == [until]  # pinned before training, kept by the crash
    assert runs_of(registry) == []

    rerun = ToyTask([*stamps, time.time() + 1])  # traffic after the pin is not in the resumed window
    result = redistill_run(rerun, registry, ToyRecipe(), "unused", None, quiet)
    assert rerun.trained == [(until, checkpoint)]
    assert result.data["until"] == until and result.data["counts"] == {"shadow_window": 9, "holdout": 1}
    assert pins_of(registry) == {}


def test_a_window_too_small_is_refused_and_leaves_nothing_to_resume(registry: Registry) -> None:
    task = ToyTask(recent(2))
    with pytest.raises(ValueError, match="only 2 usable toy records in the window; need at least 3"):
        redistill_run(task, registry, ToyRecipe(), "unused", None, quiet)
    assert task.trained == [] and pins_of(registry) == {} and runs_of(registry) == []


def test_without_a_student_with_a_teacher_there_is_nothing_to_redistil(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no toy student"):
        redistill_run(ToyTask(recent(5)), Registry(tmp_path), ToyRecipe(), "unused", None, quiet)


def test_a_given_window_end_is_used_and_not_pinned(registry: Registry) -> None:
    stamps = recent(10)
    task = ToyTask(stamps)
    result = redistill_run(task, registry, ToyRecipe(until=stamps[5]), "unused", PARENT, quiet)
    assert result.data["until"] == stamps[5] and result.data["counts"] == {"shadow_window": 4, "holdout": 1}
    assert not (registry.root.parent / "distill" / INFLIGHT_FILE).exists()


def test_the_pin_key_is_the_parent_and_recipe_without_window_end_or_checkpoint_interval(
    registry: Registry,
) -> None:
    parent = registry.get(PARENT)
    first = InterruptibleRun.open(registry, parent, ToyRecipe())
    assert InterruptibleRun.open(registry, parent, ToyRecipe(until=5.0, checkpoint_every=3)).key == first.key
    assert InterruptibleRun.open(registry, parent, ToyRecipe()).until == first.until  # same run: same window
    assert InterruptibleRun.open(registry, parent, ToyRecipe(seed=1)).key != first.key
    assert InterruptibleRun.open(registry, registry.get(TEACHER), ToyRecipe()).key != first.key
    assert first.checkpoint.name == f"{first.key}-{first.until:.3f}.pt"


def test_a_pin_older_than_a_day_is_dropped_with_its_checkpoint(registry: Registry) -> None:
    parent, now = registry.get(PARENT), 1_000_000.0
    old = InterruptibleRun.open(registry, parent, ToyRecipe(), now=lambda: now)
    old.checkpoint.parent.mkdir(parents=True)
    old.checkpoint.write_bytes(b"weights")
    later = InterruptibleRun.open(registry, parent, ToyRecipe(), now=lambda: now + PIN_MAX_AGE_S)
    assert later.until == now + PIN_MAX_AGE_S  # a fresh window
    assert not old.checkpoint.exists() and pins_of(registry) == {later.key: later.until}


def test_the_seed_recipe_is_the_first_builds_along_the_whole_line() -> None:
    first = toy_manifest("toy-student", 1, Lineage(recipe={"dataset": "bbc", "seed": 3, "epochs": 2}))
    assert seed_recipe(first, ToySeedRecipe) == ToySeedRecipe("bbc", 3)
    redistilled = toy_manifest(
        "toy-student",
        2,
        Lineage(recipe={"name": "toy-redistill", "seed": 0, "seed_recipe": {"dataset": "bbc", "seed": 3}}),
    )
    assert seed_recipe(redistilled, ToySeedRecipe) == ToySeedRecipe("bbc", 3)
