"""The default sweep on the default /classify teacher (issue 22 §1): wall time, the frontier, and the best
point against today's default student.

    .venv/bin/python -m loadtests.bench_sweep --state-dir /tmp/kdgate-sweep            # all 30 points
    .venv/bin/python -m loadtests.bench_sweep --state-dir /tmp/kdgate-sweep --points 6 # a spread of 6
    .venv/bin/python -m loadtests.bench_sweep --state-dir /tmp/kdgate-sweep --parallel-check

Builds the default models into the state dir if it has none (the full seed data: about 10 minutes on 2
cores). `--points N` keeps N points spread evenly over the default grid (every knob still varies).
Re-running resumes the same sweep; the wall time is then that of the points it trained.

`--parallel-check` answers the issue's question "two points at a time on 2 cores, or one with 2
threads?": it trains two points one after the other with 2 threads, then two at once in two processes
with 1 thread each, and reports both wall times.

Writes loadtests/results/bench_sweep.json (or bench_sweep_parallel.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from distill.classify.build import ensure_default_classify_models
from distill.classify.recipe import ClassifyRecipe
from distill.registry import Registry
from distill.workbench.grid import Point, grid
from distill.workbench.pareto import frontier
from distill.workbench.points import POINTS_FILE, read_points, read_spec
from distill.workbench.report import write_report
from distill.workbench.rule import choose, parse_rule
from distill.workbench.sweep import SweepSpec, run_sweep, sweep_data
from distill.workbench.trial import run_point

RESULTS = Path(__file__).parent / "results"
KNOBS = ("temperature", "alpha", "layers")


def spread(points: list[Point], n: int) -> list[Point]:
    """`n` points evenly spaced through the grid's order."""
    if n >= len(points):
        return points
    return [points[round(i * (len(points) - 1) / max(1, n - 1))] for i in range(n)]


def knob_effects(points: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean agreement for each value of each knob, and the spread between its best and worst value:
    which knob moved agreement most, and by how much."""
    effects = {}
    for knob in KNOBS:
        by_value: dict[str, list[float]] = {}
        for p in points:
            by_value.setdefault(str(p[knob]), []).append(p["agreement"])
        means = {value: round(statistics.mean(v), 4) for value, v in by_value.items()}
        effects[knob] = {**means, "spread": round(max(means.values()) - min(means.values()), 4)}
    return effects


def sweep_bench(args: argparse.Namespace) -> dict[str, Any]:
    registry = Registry(args.state_dir)
    teacher, _ = ensure_default_classify_models(registry, ClassifyRecipe())
    points = spread(grid(), args.points)
    recipe = ClassifyRecipe(student_examples=None)
    spec = SweepSpec(teacher.task, teacher.ref, recipe, tuple(points), args.fraction)
    started = time.monotonic()
    folder = run_sweep(
        registry, spec, on_point=lambda r, done, total: print(f"{done}/{total} {r}", flush=True)
    )
    wall = time.monotonic() - started
    report, plot = write_report(folder)
    recorded = read_points(folder / POINTS_FILE)
    references = read_spec(folder)["references"]
    default = references["student"]
    rule = parse_rule(f"agreement max where p50_ms <= {default['p50_ms']}")
    best = choose(recorded, rule)
    return {
        "sweep": folder.name,
        "points": len(recorded),
        "fraction": args.fraction,
        "wall_seconds": round(wall, 1),
        "seconds_per_point": round(wall / max(1, len(points)), 1),
        "report": str(report),
        "pareto_png": str(plot),
        "references": references,
        "frontier": [
            {k: p[k] for k in ("id", "agreement", "accuracy", "p50_ms", "size_mb")}
            for p in frontier(recorded, "agreement")
        ],
        "rule": str(rule),
        "best_at_default_p50": best,
        "target": {
            "agreement": ">= 0.92 at p50 <= the default student's",
            "wall_seconds_30_points": "<= 1500",
        },
        "knob_effects_on_agreement": knob_effects(recorded),
    }


def _one_point(state_dir: str, point: Point, threads: int, fraction: float) -> float:
    """Trains and measures one point in this process; returns its wall seconds."""
    registry = Registry(Path(state_dir))
    teacher = registry.latest("classify-teacher")
    assert teacher is not None
    recipe = replace(ClassifyRecipe(student_examples=None), threads=threads)
    spec = SweepSpec(teacher.task, teacher.ref, recipe, (point,), fraction)
    data = sweep_data(registry, teacher, spec, log=lambda _: None)
    started = time.monotonic()
    scratch = Path(state_dir) / "bench-scratch" / f"{point.id}-{threads}"
    run_point(registry, teacher, recipe, data, point, None, scratch, 100)
    return time.monotonic() - started


def parallel_bench(args: argparse.Namespace) -> dict[str, Any]:
    registry = Registry(args.state_dir)
    ensure_default_classify_models(registry, ClassifyRecipe())
    pair = [Point(2.0, 0.9, 2), Point(4.0, 0.9, 2)]
    state = str(args.state_dir)
    _one_point(state, Point(1.0, 0.9, 1), 2, args.fraction)  # warms the soft-label cache and the disk
    started = time.monotonic()
    sequential = [_one_point(state, p, 2, args.fraction) for p in pair]
    sequential_wall = time.monotonic() - started
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        parallel = pool.starmap(_one_point, [(state, p, 1, args.fraction) for p in pair])
    parallel_wall = time.monotonic() - started
    return {
        "points": [p.id for p in pair],
        "fraction": args.fraction,
        "one_at_a_time_2_threads": {"wall_seconds": round(sequential_wall, 1), "per_point": sequential},
        "two_at_a_time_1_thread": {"wall_seconds": round(parallel_wall, 1), "per_point": parallel},
        "note": "each wall time includes loading the split and cached teacher logits per point",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/kdgate-sweep"))
    parser.add_argument("--points", type=int, default=30, help="points spread over the default grid")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--parallel-check", action="store_true")
    args = parser.parse_args()
    result = parallel_bench(args) if args.parallel_check else sweep_bench(args)
    name = "bench_sweep_parallel.json" if args.parallel_check else "bench_sweep.json"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
