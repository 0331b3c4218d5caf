"""Calibration of the default /classify teacher and student (issue 22's ECE target: ≤ 0.03 after scaling).

    .venv/bin/python -m loadtests.bench_calibration --state-dir /tmp/kdgate-calibration

Builds the default models into the state dir if it has none (the full seed data: about 10 minutes on 2
cores), then reads what the build measured into each manifest: the temperature fitted on the
validation split, and the test split's ECE (15 bins) before and after scaling. Also recomputes both
ECEs from the served model's test logits, as a check on the figures in the manifests.
Writes loadtests/results/bench_calibration.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from distill.classify.build import ensure_default_classify_models, load_split
from distill.classify.evaluate import softmax
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import load_runner
from distill.registry import Manifest, Registry
from distill.workbench.calibrate import expected_calibration_error

RESULTS = Path(__file__).parent / "results" / "bench_calibration.json"


def figures(
    registry: Registry, manifest: Manifest, texts: list[str], labels: np.ndarray
) -> dict[str, object]:
    calibration = manifest.calibration
    assert calibration is not None, f"{manifest.ref} was built without calibration"
    logits = load_runner(registry, manifest.ref, threads=2, prefer_onnx=True).predict_logits(texts)
    return {
        "ref": manifest.ref,
        "temperature": calibration.temperature,
        "ece": calibration.ece,
        "calibrated_ece": calibration.calibrated_ece,
        "recomputed_ece": expected_calibration_error(softmax(logits), labels),
        "recomputed_calibrated_ece": expected_calibration_error(
            softmax(logits / calibration.temperature), labels
        ),
        "test_accuracy": float((logits.argmax(1) == labels).mean()),
        "test_examples": len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/kdgate-calibration"))
    args = parser.parse_args()
    registry = Registry(args.state_dir)
    recipe = ClassifyRecipe()
    teacher, student = ensure_default_classify_models(registry, recipe)
    test = load_split(recipe).test
    labels = np.asarray(test.labels)
    report = {
        "teacher": figures(registry, teacher, test.texts, labels),
        "student": figures(registry, student, test.texts, labels),
    }
    print(json.dumps(report, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
