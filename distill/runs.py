"""One re-distillation run for either task: window → targets → train → gate → register → record.

The skeleton owns what every run does the same way: it finds the parent student and its teacher, pins
the window's end on disk before training (a killed run resumes on the same window, from its checkpoint),
gates the candidate against the parent on the same data, registers it with its lineage only if it
passes, and appends one line to `<state_dir>/distill/runs.jsonl` for every run, registered or refused.
A task (`RunTask`) supplies only what differs: its window of the shadow log, its targets (hold-out,
replay), its trainer, its export and gate figures, and its manifest.

Each task's entry point is the skeleton with its task bound (`distill.classify.redistill.redistill`):

    result = redistill_run(CLASSIFY_RUN, Registry(state_dir), RedistillRecipe(since=t0), shadow_root)
    result.manifest.ref if result.gate.passed else result.gate.reasons
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch

from distill.gate import Figures, GateConfig, GateResult, gate
from distill.registry import Lineage, Manifest, Registry, Role
from durablefs import write_json

RUNS_FILE = "runs.jsonl"
INFLIGHT_FILE = "inflight.json"
PIN_MAX_AGE_S = 86400.0

Log = Callable[[str], None]
STDERR: Log = partial(print, file=sys.stderr, flush=True)


class Recipe(Protocol):
    """What the skeleton reads of either task's recipe (a frozen dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def since(self) -> float | None: ...  # window start, epoch seconds (None: the whole log)
    @property
    def until(self) -> float | None: ...  # window end (None: now, pinned until the run ends)
    @property
    def seed(self) -> int: ...
    @property
    def threads(self) -> int: ...  # training threads: the other cores serve
    @property
    def gate(self) -> GateConfig: ...


class Window(Protocol):
    """A task's window: its usable records, with their timestamps."""

    def __len__(self) -> int: ...
    @property
    def stamps(self) -> Iterable[float]: ...


R = TypeVar("R", bound=Recipe)
W = TypeVar("W", bound=Window)  # the task's window of the shadow log
T = TypeVar("T")  # its targets: training data, the gate's hold-out, what its trainer and gate need
S = TypeVar("S")  # the trained student, in memory
C = TypeVar("C")  # the exported candidate, in the staging folder


@dataclass(frozen=True)
class RunContext(Generic[R]):
    """What every step of one run may read."""

    registry: Registry
    recipe: R
    task: str  # the task's name: its shadow log is the window, its students' line gets the candidate
    parent: Manifest  # the student warm-started from, and gated against
    teacher: Manifest  # the parent's teacher: its shadow records are the targets
    seed_recipe: Any  # the first build's recipe in the parent's line: its seed data is the replay
    until: float  # the window end, pinned
    shadow_root: str
    log: Log
    started: float  # time.monotonic() at the start of the run

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)


class RunTask(Protocol[R, W, T, S, C]):
    """What one task supplies to `redistill_run`; every hook gets the run's `RunContext`."""

    kind: str  # "classify" or "generate": the kind of task it re-distils
    recipe_name: str  # the lineage's recipe name
    seed_recipe_type: type[Any]  # the first build's recipe class
    min_records: int  # a smaller window is refused before training
    records: str  # what the window counts, for that refusal
    no_parent: str  # the error when there is no student to re-distil

    def window(self, run: RunContext[R], since: float | None, until: float) -> W | None:
        """The usable shadow records of [since, until) that the teacher labelled."""
        ...

    def targets(self, run: RunContext[R], window: W) -> tuple[T, dict[str, int]]:
        """Training set and hold-out (the newest slice), with replay; and the counts of each part."""
        ...

    def train(self, run: RunContext[R], targets: T, checkpoint: Path) -> tuple[S, dict[str, float]]:
        """The student warm-started from the parent, and the trainer's summary (steps, final loss,
        the step it resumed from): the trainer checkpoints to `checkpoint` and resumes from it."""
        ...

    def parent_figures(self, run: RunContext[R], targets: T) -> Figures: ...

    def candidate(self, run: RunContext[R], student: S, targets: T, folder: Path) -> tuple[C, Figures]:
        """The student exported into `folder` as the gateway will load it, and its gate figures."""
        ...

    def lineage_data(self, run: RunContext[R]) -> dict[str, object]:
        """What the lineage's data says beyond the shadow window."""
        ...

    def manifest(self, run: RunContext[R], candidate: C, passed: Passed) -> Manifest:
        """The manifest of a candidate that passed (its metrics carry `passed.verdict`)."""
        ...


@dataclass(frozen=True)
class Passed:
    """What the skeleton knows of a candidate the gate passed, for its manifest."""

    verdict: GateResult
    figures: Figures  # the candidate's
    training: dict[str, float]  # the trainer's summary
    lineage: Lineage


@dataclass(frozen=True)
class RunResult:
    gate: GateResult
    manifest: Manifest | None  # None when the gate refused the candidate
    data: dict[str, object]  # the window: since, until, first/last record, counts
    seconds: float
    training: dict[str, float]  # the trainer's summary: steps, final loss, step it resumed from


def redistill_run(
    task: RunTask[R, W, T, S, C],
    registry: Registry,
    recipe: R,
    shadow_root: str,
    parent_ref: str | None = None,
    log: Log = STDERR,
    task_name: str | None = None,
) -> RunResult:
    """One run of `task` on the latest student of `task_name` (default: the bundled task of its kind),
    or on `parent_ref`; each kind's entry point is this with its kind bound
    (`redistill = partial(redistill_run, CLASSIFY_RUN)`)."""
    started = time.monotonic()
    torch.set_num_threads(recipe.threads)
    name = task_name or task.kind
    parent = registry.get(parent_ref) if parent_ref else registry.latest_of(name, Role.STUDENT)
    if parent is None or parent.lineage.teacher is None:
        raise ValueError(f"task {name!r}: {task.no_parent}")
    if parent.task_kind != task.kind:
        raise ValueError(f"{parent.ref} is a {parent.task_kind} student, not {task.kind}")
    teacher, seed = registry.get(parent.lineage.teacher), seed_recipe(parent, task.seed_recipe_type)
    pinned = InterruptibleRun.open(registry, parent, recipe)  # an interrupted identical run: same window
    run = RunContext(
        registry,
        recipe,
        parent.task,
        parent,
        teacher,
        seed,
        pinned.until,
        shadow_root,
        log,
        started,
    )

    # 1. The window, its newest slice held out for the gate, and replay against forgetting.
    window = task.window(run, recipe.since, run.until)
    n = len(window) if window is not None else 0
    if window is None or n < task.min_records:
        pinned.finish()  # nothing to resume: the next run takes a fresh window
        raise ValueError(f"only {n} usable {task.records} in the window; need at least {task.min_records}")
    targets, counts = task.targets(run, window)
    data: dict[str, object] = {
        "since": recipe.since,
        "until": run.until,
        "first_ts": float(min(window.stamps)),
        "last_ts": float(max(window.stamps)),
        "counts": counts,
    }
    log(f"re-distilling {parent.ref}: {counts}")

    # 2. Train, warm-started from the parent.
    student, training = task.train(run, targets, pinned.checkpoint)

    # 3. Export as served, gate against the parent on the same data, register only what passes.
    parent_figures = task.parent_figures(run, targets)
    with registry.stage(parent.name) as staging:
        candidate, figures = task.candidate(run, student, targets, staging.path)
        verdict = gate(figures, parent_figures, recipe.gate)
        manifest = None
        if verdict.passed:
            lineage = Lineage(
                teacher=run.teacher.ref,
                parent=parent.ref,
                data={"source": "shadow", "window": data, **task.lineage_data(run)},
                recipe={"name": task.recipe_name, **asdict(recipe), "seed_recipe": asdict(run.seed_recipe)},
                seed=recipe.seed,
            )
            manifest = staging.commit(
                task.manifest(run, candidate, Passed(verdict, figures, training, lineage))
            )

    # 4. Record every run, registered or refused.
    result = RunResult(verdict, manifest, data, run.elapsed(), training)
    record_run(registry, run.task, parent, manifest, verdict, data, result.seconds, asdict(recipe))
    pinned.finish()
    log(
        f"registered {manifest.ref}"
        if manifest
        else f"gate refused the candidate: {'; '.join(verdict.reasons)}"
    )
    return result


def seed_recipe(parent: Manifest, recipe_type: type[Any]) -> Any:
    """The recipe of the first build in the parent's line (a re-distilled parent carries it as its
    `seed_recipe`): its seed data is the replay, and its held-out split a gate figure."""
    chain = parent.lineage.recipe
    source: dict[str, Any] = chain.get("seed_recipe", chain)
    known = set(recipe_type.__dataclass_fields__)
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in source.items() if k in known}
    return recipe_type(**given)


@dataclass(frozen=True)
class InterruptibleRun:
    """What makes a run resumable after a crash or kill: its window end is pinned on disk before it
    trains (a rerun without `until` would otherwise take "now" and train on a different window), and
    the trainer checkpoints under a name derived from everything that defines the run.

    `<state_dir>/distill/inflight.json` holds the pinned runs; `<state_dir>/distill/checkpoints/`
    their checkpoints. Both are removed when the run ends (registered or refused).
    """

    inflight: Path
    key: str  # parent + recipe without `until`
    until: float
    checkpoint: Path

    @classmethod
    def open(
        cls, registry: Registry, parent: Manifest, recipe: Any, now: Callable[[], float] = time.time
    ) -> InterruptibleRun:
        """`recipe`: a frozen dataclass with `until` and `checkpoint_every` (either task's recipe)."""
        folder = Path(registry.root.parent) / "distill"
        inflight = folder / INFLIGHT_FILE
        spec = {"parent": parent.ref, "recipe": {**asdict(recipe), "until": None, "checkpoint_every": None}}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        at = now()
        # A pin older than a day belongs to a run that is not coming back: train on a fresh window, and
        # drop its checkpoint (a few hundred MB for a /generate student).
        pinned = {}
        for k, v in _read_json(inflight).items():
            if at - float(v) < PIN_MAX_AGE_S:
                pinned[k] = v
            else:
                (folder / "checkpoints" / f"{k}-{float(v):.3f}.pt").unlink(missing_ok=True)
        until = recipe.until if recipe.until is not None else pinned.get(key, at)
        if recipe.until is None and key not in pinned:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(inflight, {**pinned, key: until})
        checkpoint = folder / "checkpoints" / f"{key}-{until:.3f}.pt"
        return cls(inflight, key, float(until), checkpoint)

    def finish(self) -> None:
        pinned = _read_json(self.inflight)
        if pinned.pop(self.key, None) is not None:
            write_json(self.inflight, pinned)
        self.checkpoint.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def record_run(
    registry: Registry,
    task: str,
    parent: Manifest,
    registered: Manifest | None,
    verdict: GateResult,
    data: dict[str, object],
    seconds: float,
    recipe: dict[str, Any],
) -> None:
    """Every run of either task, registered or refused, with its reasons and figures:
    `<state_dir>/distill/runs.jsonl` (the audit trail `kdgate distill` and the loop leave)."""
    path = Path(registry.root.parent) / "distill" / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": time.time(),
        "task": task,
        "parent": parent.ref,
        "registered": registered.ref if registered else None,
        "gate": verdict.to_dict(),
        "data": data,
        "seconds": seconds,
        "recipe": recipe,
    }
    with path.open("a") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")
