"""Wall time of the default first build (what `kdgate serve` does on a fresh state dir).

    .venv/bin/python -m loadtests.bench_build --state-dir /tmp/fresh-state

Writes loadtests/results/bench_build.json with the time per stage and the resulting figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from distill.classify.build import build_student, build_teacher
from distill.classify.recipe import ClassifyRecipe
from distill.registry import Registry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="must not hold models yet")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_build.json"))
    args = parser.parse_args()
    registry = Registry(args.state_dir)
    if registry.list():
        raise SystemExit(f"{args.state_dir} already holds models; give a fresh directory")
    recipe = ClassifyRecipe()
    started = time.monotonic()
    teacher = build_teacher(registry, recipe)
    teacher_s = time.monotonic() - started
    student = build_student(registry, recipe, teacher.ref)
    total_s = time.monotonic() - started
    report = {
        "cpus": os.cpu_count(),
        "recipe": {k: v for k, v in recipe.__dict__.items()},
        "seconds": {
            "teacher": round(teacher_s, 1),
            "student": round(total_s - teacher_s, 1),
            "total": round(total_s, 1),
        },
        "target_total_seconds": 600,
        "teacher": {"ref": teacher.ref, **teacher.metrics},
        "student": {"ref": student.ref, **student.metrics},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
