"""A sweep: train a grid of students on a slice of the data and record what each one is worth.

Reads top to bottom: the sweep's id from everything that defines it → its folder
(`<state_dir>/distill/sweeps/<id>/`) and `sweep.json`, written once with the references' figures and
the latency baseline → the teacher's logits on the slice and the test split (the soft-label cache: the
teacher runs once per dataset, whatever the number of points) → each point not yet in `points.jsonl`,
trained, measured and appended as it ends.

The id is a hash of the teacher, the data, the slice, the base recipe and the grid, so running the same
command again *is* the resume: a killed sweep continues with the points it has not recorded, and a
finished one trains nothing.

Points run one at a time, each with the recipe's threads (2). Two at a time with one thread each
(`loadtests/bench_sweep.py --parallel-check`, two 2-layer points on 3% of the tweets, idle 2 cores)
took 30 s per pair against 35 s one after the other, and 34 s against 35.5 s of wall time once each
process loaded its data: at most 15% faster, while each point's latency would be timed with the
other point training on the second core — the noise the timing exists to keep out.

    spec = SweepSpec(task="classify", teacher="classify-teacher@1", recipe=ClassifyRecipe(),
                     points=tuple(grid()), fraction=0.1)
    folder = run_sweep(Registry(state_dir), spec)        # points.jsonl, sweep.json
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distill.classify.build import load_split, teacher_labelled, teacher_soft_labels
from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import load_runner
from distill.classify.tokenize import BatchTokenizer
from distill.corpora import Split
from distill.registry import Manifest, Registry, Role
from distill.workbench.grid import Point
from distill.workbench.latency import Session, measure, measure_pair
from distill.workbench.points import (
    POINTS_FILE,
    SPEC_FILE,
    append_point,
    done_ids,
    read_points,
    read_spec,
    sweeps_root,
)
from distill.workbench.trial import MB, Baseline, SweepData, run_point
from durablefs import write_json

# ClassifyRecipe fields that came after the first sweeps, at their defaults (see `SweepSpec.id`).
LATER_FIELDS: dict[str, Any] = {
    "losses": ("logits",),
    "hidden_weight": 1.0,
    "attention_weight": 1.0,
    "prune": 0.0,
    "via": None,
}
LATENCY_TEXTS = 300  # batch-1 calls per model per point: p99 is then the 3rd slowest

Log = Callable[[str], None]
OnPoint = Callable[[dict[str, Any], int, int], None]  # (record, points done, points in the grid)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep (its id is a hash of it, less what does not change a result)."""

    task: str
    teacher: str  # ref
    recipe: ClassifyRecipe  # data, split, seed, batch, learning rates; the grid sets T, α, layers, width
    points: tuple[Point, ...]
    fraction: float = 0.1  # of the recipe's training data (what a pick trains on) each point trains on
    latency_texts: int = LATENCY_TEXTS

    @property
    def id(self) -> str:
        recipe = {k: v for k, v in asdict(self.recipe).items() if k != "threads"}  # speed, not result
        # Fields added after the first sweeps count only when set: at their defaults, those sweeps
        # keep their ids (and resume).
        recipe = {k: v for k, v in recipe.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
        key = {
            "teacher": self.teacher,
            "recipe": recipe,
            "points": [p.id for p in self.points],
            "fraction": self.fraction,
            "latency_texts": self.latency_texts,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.task}-{digest[:10]}"


def run_sweep(
    registry: Registry, spec: SweepSpec, log: Log = _stderr, on_point: OnPoint | None = None
) -> Path:
    """Trains and records every point of `spec` not yet recorded; returns the sweep's folder."""
    if not 0 < spec.fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {spec.fraction}")
    torch.set_num_threads(spec.recipe.threads)
    teacher = registry.get(spec.teacher)
    folder = sweeps_root(registry.root.parent) / spec.id
    folder.mkdir(parents=True, exist_ok=True)
    data = sweep_data(registry, teacher, spec, log)
    state = _opened(registry, teacher, spec, data, folder)
    reference = _reference_session(registry, state)
    points_file = folder / POINTS_FILE
    done = done_ids(read_points(points_file))
    log(
        f"sweep {spec.id}: {len(spec.points)} points, {len(done)} already done, "
        f"{len(data.train.texts)} texts each"
    )
    for point in spec.points:
        if point.id in done:
            continue
        record = run_point(
            registry, teacher, spec.recipe, data, point, reference, folder / "scratch", spec.latency_texts
        )
        append_point(points_file, record)
        done.add(point.id)
        if on_point is not None:
            on_point(record, len(done & {p.id for p in spec.points}), len(spec.points))
    return folder


def sweep_data(registry: Registry, teacher: Manifest, spec: SweepSpec, log: Log) -> SweepData:
    """The split, the slice every point trains on, and the teacher's logits (cached by content)."""
    split = load_split(spec.recipe, teacher.labels)
    # The recipe's training data (its `student_examples` cap, None for all) is what a pick trains on;
    # every point gets the same leading share of it (the split is already shuffled by its seed).
    full = len(split.train.texts) if spec.recipe.student_examples is None else spec.recipe.student_examples
    n = max(1, math.ceil(spec.fraction * min(full, len(split.train.texts))))
    split = replace(split, train=split.train.take(list(range(n))))
    labelled = split.train.labelled
    if not labelled:  # the teacher's answers stand in for labels (accuracy is then not reported)
        split = Split(
            *(teacher_labelled(registry, teacher, part, log) for part in (split.train, split.val, split.test))
        )
    train = split.train
    soft = torch.from_numpy(teacher_soft_labels(registry, teacher, train, log))  # (N, C)
    teacher_test = teacher_soft_labels(registry, teacher, split.test, log)  # (T, C)
    return SweepData(split, train, soft, teacher_test, labelled)


def _opened(
    registry: Registry, teacher: Manifest, spec: SweepSpec, data: SweepData, folder: Path
) -> dict[str, Any]:
    """`sweep.json`, written on the first start only: a resumed sweep keeps its reference and baseline,
    so its points' latencies stay comparable with those recorded before the kill."""
    if (folder / SPEC_FILE).exists():
        return read_spec(folder)
    student = registry.latest_of(spec.task, Role.STUDENT)
    references = {"teacher": _reference_figures(registry, teacher, data, is_teacher=True)}
    if student is not None:
        references["student"] = _reference_figures(registry, student, data, is_teacher=False)
    texts = data.latency_texts(spec.latency_texts)
    teacher_session = session_of(registry, teacher)
    if student is not None:  # the teacher timed beside the reference: its latency on the same scale
        pair = measure_pair(teacher_session, session_of(registry, student), texts)
        references["student"] |= {
            "p50_ms": round(pair.reference.p50_ms, 3),
            "p99_ms": round(pair.reference.p99_ms, 3),
        }
        references["teacher"] |= {
            "p50_ms": round(pair.candidate.p50_ms, 3),
            "p99_ms": round(pair.candidate.p99_ms, 3),
        }
    else:
        alone = measure(teacher_session, texts)
        references["teacher"] |= {"p50_ms": round(alone.p50_ms, 3), "p99_ms": round(alone.p99_ms, 3)}
    state = {
        "id": spec.id,
        "task": spec.task,
        "teacher": teacher.ref,
        "reference": student.ref if student else None,
        "fraction": spec.fraction,
        "train_examples": len(data.train.texts),
        "labelled": data.labelled,
        "recipe": asdict(spec.recipe),
        "points": [{"id": p.id, **p.params()} for p in spec.points],
        "latency_texts": spec.latency_texts,
        "references": references,
    }
    write_json(folder / SPEC_FILE, state)
    return state


def _reference_figures(
    registry: Registry, model: Manifest, data: SweepData, is_teacher: bool
) -> dict[str, Any]:
    """A reference's figures on the sweep's own test split, so the report compares like with like."""
    texts = data.split.test.texts
    logits = data.teacher_test if is_teacher else load_runner(registry, model.ref, 2).predict_logits(texts)
    onnx = onnx_file(registry, model)
    return {
        "ref": model.ref,
        "accuracy": round(accuracy(logits, data.split.test.labels), 4) if data.labelled else None,
        "agreement": round(compare_to_teacher(data.teacher_test, logits)["agreement"], 4),
        "size_mb": round(onnx.stat().st_size / MB, 2),
    }


def _reference_session(registry: Registry, state: dict[str, Any]) -> tuple[Session, Baseline] | None:
    ref = state["reference"]
    if ref is None:
        return None
    student = state["references"]["student"]
    return session_of(registry, registry.get(ref)), Baseline(student["p50_ms"], student["p99_ms"])


def session_of(registry: Registry, model: Manifest) -> Session:
    """A latency session on the ONNX file `model` is served from."""
    directory = registry.path(model.ref)
    return Session(onnx_file(registry, model), BatchTokenizer.from_dir(directory, model.max_length))


def onnx_file(registry: Registry, model: Manifest) -> Path:
    """The ONNX file a model is served from (a kdgate teacher's parity-checked ONNX copy)."""
    name = next((f for f in model.files if f.endswith(".onnx")), None)
    if name is None:
        raise ValueError(f"{model.ref} has no ONNX file to time")
    return registry.path(model.ref) / name
