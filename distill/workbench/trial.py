"""One point of a sweep, top to bottom: build the student the point describes → prune it (when the
point says so) → distil it on the sweep's
slice of the training data against the cached teacher logits → export INT8 ONNX → score it on the test
split against the labels and the teacher → calibrate on the validation split → time it beside the
reference → one record for `points.jsonl`.

Everything is measured on the INT8 export, the file a gated student would serve; the PyTorch model is
only the thing that trains. The point's files are scratch: a pick retrains the point on the full data,
so nothing of a point outlives its record.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.export import export_onnx, onnx_logits, quantize_int8
from distill.classify.kd import distil, needs_teacher_model
from distill.classify.recipe import ClassifyRecipe
from distill.classify.student_start import feature_teacher, student_init
from distill.corpora import LabelledTexts, Split
from distill.registry import Manifest, Registry
from distill.workbench.calibrate import calibration_of
from distill.workbench.grid import Point
from distill.workbench.latency import Session, measure, measure_pair
from distill.workbench.prune import prune_student

MB = 1e6


@dataclass(frozen=True)
class SweepData:
    """What every point of a sweep shares: the split, the training slice with the teacher's logits on
    it (computed once, cached), and the teacher's logits on the test split."""

    split: Split
    train: LabelledTexts  # the --fraction slice of the training split
    soft: torch.Tensor  # (N, C) teacher logits on `train`
    teacher_test: np.ndarray  # (T, C) teacher logits on the test split
    labelled: bool  # False: the user's texts had no labels; the teacher's answers stand in

    def latency_texts(self, n: int) -> list[str]:
        return self.split.test.texts[:n]


@dataclass(frozen=True)
class Baseline:
    """The reference's latency when the sweep began: a point's latency is its ratio to the reference
    measured beside it, times this (see latency.py)."""

    p50_ms: float
    p99_ms: float


def point_recipe(recipe: ClassifyRecipe, point: Point, labelled: bool) -> ClassifyRecipe:
    """The base recipe with the point's knobs; unlabelled data is pure KD (α 1), as `build_student` does."""
    return replace(
        recipe,
        temperature=point.temperature,
        alpha=point.alpha if labelled else 1.0,
        student_layers=point.layers,
        student_width=point.width,
        losses=point.losses,
        prune=point.prune,
    )


def run_point(
    registry: Registry,
    teacher: Manifest,
    recipe: ClassifyRecipe,
    data: SweepData,
    point: Point,
    reference: tuple[Session, Baseline] | None,
    scratch: Path,
    latency_texts: int,
) -> dict[str, Any]:
    """Trains, exports and measures `point`; returns its record (figures rounded for the table)."""
    recipe = point_recipe(recipe, point, data.labelled)
    torch.set_num_threads(recipe.threads)
    model, tokenizer = student_init(registry, teacher, recipe)
    teacher_model = feature_teacher(registry, teacher, tokenizer) if needs_teacher_model(recipe) else None
    started = time.monotonic()
    labels = torch.tensor(data.train.labels)
    pruned = prune_student(model, tokenizer, data.train.texts, data.soft, labels, recipe)
    summary = distil(
        model, tokenizer, data.train.texts, data.soft, labels, recipe, point.id, False, teacher_model
    )
    train_seconds = time.monotonic() - started

    shutil.rmtree(scratch, ignore_errors=True)  # a point killed mid-export left its files
    scratch.mkdir(parents=True)
    fp32, int8 = scratch / "model.onnx", scratch / "model.int8.onnx"
    export_onnx(model, fp32, tokenizer)
    quantize_int8(fp32, int8)
    test, val = data.split.test, data.split.val
    test_logits = onnx_logits(int8, tokenizer, test.texts)
    compared = compare_to_teacher(data.teacher_test, test_logits)
    calibration = calibration_of(
        onnx_logits(int8, tokenizer, val.texts), val.labels, test_logits, test.labels
    )
    timing = latency_figures(Session(int8, tokenizer), reference, data.latency_texts(latency_texts))
    record: dict[str, Any] = {
        "id": point.id,
        **point.params(),
        "alpha_used": recipe.alpha,
        "accuracy": round(accuracy(test_logits, test.labels), 4) if data.labelled else None,
        "agreement": round(compared["agreement"], 4),
        "kl": round(compared["mean_kl"], 4),
        "ece": round(calibration.ece, 4),
        "calibrated_ece": round(calibration.calibrated_ece, 4),
        "calibration_temperature": calibration.temperature,
        **timing,
        "size_mb": round(int8.stat().st_size / MB, 2),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "heads_kept": pruned["heads_kept"] if pruned else None,
        "channels_kept": pruned["channels_kept"] if pruned else None,
        "train_seconds": round(train_seconds, 1),
        "train_examples": len(data.train.texts),
        "steps": int(summary["steps"]),
        "final_loss": round(summary["final_loss"], 4),
    }
    shutil.rmtree(scratch)
    return record


def latency_figures(
    candidate: Session, reference: tuple[Session, Baseline] | None, texts: list[str]
) -> dict[str, float | None]:
    """p50/p99 in ms of `candidate` over `texts`: normalised by the reference when there is one (drift
    cancels), raw otherwise."""
    if reference is None:
        alone = measure(candidate, texts)
        p50, p99, raw, beside = alone.p50_ms, alone.p99_ms, alone, None
    else:
        session, baseline = reference
        pair = measure_pair(candidate, session, texts)
        p50, p99 = pair.ratio_p50 * baseline.p50_ms, pair.ratio_p99 * baseline.p99_ms
        raw, beside = pair.candidate, pair.reference
    return {
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "p50_ms_raw": round(raw.p50_ms, 3),
        "p99_ms_raw": round(raw.p99_ms, 3),
        "ref_p50_ms": round(beside.p50_ms, 3) if beside else None,  # the reference beside this point
        "ref_p99_ms": round(beside.p99_ms, 3) if beside else None,
    }
