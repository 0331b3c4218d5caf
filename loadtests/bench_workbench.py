"""Workbench ablations at an equal training budget (issue 22, "Measure"). Part `prune`: students pruned
by 30% and 50% of their heads and feed-forward channels, then KD, against students cut from the
teacher to the same size.

    .venv/bin/python -m loadtests.bench_workbench prune --state-dir /tmp/kdgate-prune
    .venv/bin/python -m loadtests.bench_workbench prune --state-dir /tmp/kdgate-prune --examples 20000 --full

Equal size: a transformer layer's weights are ~1.77M parameters at MiniLM's width, and pruning S of
its heads and channels leaves (1 − S) of them, so 3 layers pruned 30% (2.1 layer-equivalents) and 4
layers pruned 50% (2) stand against the 2-layer cut, and 2 layers pruned 50% (1) against the 1-layer
cut. Every student is a point of one sweep (`distill.workbench.trial`): same training texts, same
epochs, same KD (T 2, α 0.9), measured on its INT8 ONNX export — agreement and KL with the teacher,
accuracy, ECE, p50/p99 at batch 1 on 1 thread timed call by call beside the reference student in the
same process (the control: the registry's current student), size in MB.

Without `--full` the teacher and every student train on `--examples` texts (default 1600) and are
tested on `--eval` (default 500): minutes on 2 cores, for the comparison, not for the absolute
figures of the product's default build. Writes loadtests/results/bench_workbench_prune_<examples>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distill.classify.build import ClassifyRecipe, ensure_default_classify_models
from distill.registry import Registry
from distill.workbench.grid import Point
from distill.workbench.points import POINTS_FILE, read_points, read_spec
from distill.workbench.sweep import SweepSpec, run_sweep

RESULTS = Path(__file__).parent / "results"
FIELDS = ("params_m", "heads_kept", "channels_kept", "agreement", "kl", "accuracy", "ece")
FIELDS += ("p50_ms", "p99_ms", "p50_ms_raw", "ref_p50_ms", "size_mb", "train_seconds")
# (cut student, the pruned students of its size)
PAIRS = (
    (Point(2.0, 0.9, 2), (Point(2.0, 0.9, 3, prune=0.3), Point(2.0, 0.9, 4, prune=0.5))),
    (Point(2.0, 0.9, 1), (Point(2.0, 0.9, 2, prune=0.5),)),
)


def prune_bench(args: argparse.Namespace) -> dict[str, Any]:
    cap = {} if args.full else {"teacher_examples": args.examples, "eval_examples": args.eval}
    recipe = ClassifyRecipe(student_examples=args.examples, **cap)
    registry = Registry(args.state_dir)
    teacher, student = ensure_default_classify_models(registry, recipe)
    points = [p for cut, pruned in PAIRS for p in (cut, *pruned)]
    spec = SweepSpec(teacher.task, teacher.ref, recipe, tuple(points), fraction=1.0)
    started = time.monotonic()
    folder = run_sweep(registry, spec, on_point=lambda r, done, n: print(f"{done}/{n} {r['id']}", flush=True))
    recorded = {p["id"]: p for p in read_points(folder / POINTS_FILE)}
    comparisons = []
    for cut, pruned in PAIRS:
        control = recorded[cut.id]
        for point in pruned:
            figures = recorded[point.id]
            comparisons.append(
                {
                    "pruned": point.id,
                    "cut": cut.id,
                    "agreement_delta": round(figures["agreement"] - control["agreement"], 4),
                    "accuracy_delta": _delta(figures, control, "accuracy"),
                    "p50_ratio": round(figures["p50_ms"] / control["p50_ms"], 3),
                    "size_ratio": round(figures["size_mb"] / control["size_mb"], 3),
                    "params_ratio": round(figures["params_m"] / control["params_m"], 3),
                }
            )
    return {
        "sweep": str(folder),
        "wall_seconds": round(time.monotonic() - started, 1),
        "teacher": teacher.ref,
        "reference_student": student.ref,
        "references": read_spec(folder)["references"],
        "train_examples": read_spec(folder)["train_examples"],
        "recipe": {"examples": args.examples, "eval": None if args.full else args.eval, "full": args.full},
        "points": {pid: {f: recorded[pid].get(f) for f in FIELDS} for pid in (p.id for p in points)},
        "comparisons": comparisons,
    }


def _delta(a: dict[str, Any], b: dict[str, Any], field: str) -> float | None:
    if a.get(field) is None or b.get(field) is None:
        return None
    return round(a[field] - b[field], 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["prune"])
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/kdgate-prune"))
    parser.add_argument("--examples", type=int, default=1600, help="training texts of every student")
    parser.add_argument("--eval", type=int, default=500, help="validation/test texts (without --full)")
    parser.add_argument("--full", action="store_true", help="the default teacher and evaluation splits")
    args = parser.parse_args()
    result = prune_bench(args)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    name = f"bench_workbench_{args.part}_{args.examples}{'_full' if args.full else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
