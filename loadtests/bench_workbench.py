"""Workbench ablations at an equal training budget (issue 22, "Measure"), one part per subcommand.

    .venv/bin/python -m loadtests.bench_workbench prune --state-dir /tmp/kdgate-prune
    .venv/bin/python -m loadtests.bench_workbench prune --state-dir /tmp/kdgate-prune --examples 20000 --full
    .venv/bin/python -m loadtests.bench_workbench via --state-dir /tmp/kdgate-via --examples 800 --eval 300
    .venv/bin/python -m loadtests.bench_workbench via --state-dir /tmp/kdgate-via --layers 2 1 --via-layers 4
    .venv/bin/python -m loadtests.bench_workbench losses --state-dir /tmp/kdgate-losses --layers 2 1
    .venv/bin/python -m loadtests.bench_workbench losses --examples 6000 --full --attention-weight 3
    .venv/bin/python -m loadtests.bench_workbench sweep --full     # the default 30-point sweep + a pick
    .venv/bin/python -m loadtests.bench_workbench knobs --full     # after `sweep`: what made the pick better

Both parts start from one teacher and one reference student (`ensure_default_classify_models`, with the
teacher fine-tuned on `--examples` texts), and time each model's ONNX file (a prune point's INT8
export, a registered model's served file) at batch 1 on 1 thread call by call beside that reference
student in the same process (`distill.workbench.latency`):
p50/p99 are the ratio to the reference measured beside it times the reference's own p50/p99 measured
when the part began, so the machine's background load cancels. A fresh `--state-dir` per size: a
state dir's teacher is reused whatever `--examples` says.

Part `prune`: students pruned by 30% and 50% of their heads and feed-forward channels, then KD, against
students cut from the teacher to the same size. A transformer layer's weights are ~1.77M parameters at
MiniLM's width, and pruning S of its heads and channels leaves (1 − S) of them, so 3 layers pruned 30%
(2.1 layer-equivalents) and 4 layers pruned 50% (2) stand against the 2-layer cut, and 2 layers pruned
50% (1) against the 1-layer cut. Every student is a point of one sweep (`distill.workbench.trial`):
same training texts, same epochs, same KD (T 2, α 0.9); agreement and KL with the teacher, accuracy,
ECE, p50/p99, size in MB.

Part `via`: direct KD (teacher → student of `--layers` layers) against progressive KD (teacher →
assistant of `--via-layers` layers → the same student; `distill.classify.progressive`), each built and
registered as the product builds it (`build_student`; INT8 only when INT8 keeps test accuracy within
0.005, so one of two students may be served, and timed, as FP32: `served` says which). Equal budget
means the *student's* budget: both students start from the teacher's first layers and train on the same
`--examples` texts, for the same epochs and batch size, with the same T, α, learning rates and seed;
only their soft targets differ (the teacher's logits, or the assistant's). The assistant trains on the
same texts with the same recipe, and its training, plus labelling those texts with it (counted in the
progressive student's seconds), is the progressive path's extra cost, reported beside it. The teacher's
labels of the texts are computed once (for the reference student) and shared by every build.

Part `losses`: logits-only KD against + hidden states, + attention, and both (`distill.classify.feature_kd`:
TinyBERT's hidden-state MSE and MiniLM's attention KL on the uniform layer map, each at weight 1), for
students of `--layers` layers cut from the teacher. Every student is a point of one sweep, as in
`prune`: same texts, epochs, T 2, α 0.9; only the loss terms differ, so each feature-KD student is
compared with the logits-only student of its depth. Its extra training seconds are the teacher's
forward pass beside every step, which logits-only KD reads from the soft-label cache.
`--hidden-weight` / `--attention-weight` set the terms' weights (the result file's name then says them,
e.g. `bench_workbench_losses_6000_full_hidden3_attention3.json`).

Part `sweep`: the product's default sweep (`kdgate distill sweep`: T 1,2,4,8,16 × layers 1,2,3 ×
α 0.5,0.9 on 10% of the training texts) against the default student, timed end to end; its frontier;
the mean agreement per value of each knob (which knob moved agreement most, and by how much); then the
pick "agreement max where p50_ms <= <the default student's p50, as the sweep measured it>", trained on
the full data and gated as `--pick` does, beside the default student. With `--full` the default teacher
and student are the product's default build (the first start's), or the ones already in `--state-dir`.

Part `knobs` (after `sweep`, on its state dir): the pick differs from the default student in two ways,
its point's knobs (T, α, layers) and its training texts (a pick trains on the whole training split, the
default recipe on `student_examples`). Two students of the default recipe change one each: the pick's
knobs on the default's texts, and the default's knobs on the pick's texts. All four are served INT8 (as a
pick is) and timed beside the default student.

Without `--full` the teacher and every student train on `--examples` texts (default 1600) and are
tested on `--eval` (default 500): minutes on 2 cores, for the comparison, not for the absolute figures
of the product's default build. Writes loadtests/results/bench_workbench_<part>_<examples>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distill.classify.assistant import via_layers_problem
from distill.classify.build import build_student, ensure_default_classify_models, load_split
from distill.classify.progressive import build_progressive
from distill.classify.recipe import ClassifyRecipe
from distill.gate import GateConfig, Refused
from distill.registry import Manifest, Registry
from distill.workbench.grid import Point, grid
from distill.workbench.latency import Session, measure
from distill.workbench.pareto import frontier_ids
from distill.workbench.pick import PICK_FILE, base_recipe, pick
from distill.workbench.points import POINTS_FILE, read_points, read_spec, sweeps_root
from distill.workbench.report import write_report
from distill.workbench.rule import parse_rule
from distill.workbench.sweep import LATENCY_TEXTS, SweepSpec, onnx_file, run_sweep, session_of
from distill.workbench.trial import MB, Baseline, latency_figures

RESULTS = Path(__file__).parent / "results"
FIELDS: tuple[str, ...] = ("params_m", "heads_kept", "channels_kept", "agreement", "kl", "accuracy", "ece")
FIELDS += ("p50_ms", "p99_ms", "p50_ms_raw", "ref_p50_ms", "size_mb", "train_seconds")
# (cut student, the pruned students of its size)
PAIRS = (
    (Point(2.0, 0.9, 2), (Point(2.0, 0.9, 3, prune=0.3), Point(2.0, 0.9, 4, prune=0.5))),
    (Point(2.0, 0.9, 1), (Point(2.0, 0.9, 2, prune=0.5),)),
)
LOSS_SETS = (("logits",), ("logits", "hidden"), ("logits", "attention"), ("logits", "hidden", "attention"))
LOSS_FIELDS = ("losses", "calibrated_ece", *FIELDS)
# What a variant is compared on with its control (variant minus control): via with direct, feature KD
# with logits-only
DELTAS = ("agreement", "kl", "accuracy", "ece", "calibrated_ece", "p50_ms", "size_mb")


def base_models(args: argparse.Namespace) -> tuple[Registry, ClassifyRecipe, Manifest, Manifest]:
    """The registry, the base recipe, the teacher and the reference student both parts start from."""
    cap = {} if args.full else {"teacher_examples": args.examples, "eval_examples": args.eval}
    recipe = ClassifyRecipe(student_examples=args.examples, **cap, **feature_weights(args))
    registry = Registry(args.state_dir)
    teacher, student = ensure_default_classify_models(registry, recipe)
    return registry, recipe, teacher, student


def feature_weights(args: argparse.Namespace) -> dict[str, float]:
    """The feature-KD terms' weights a `losses` run was given (the recipe's defaults otherwise)."""
    names = ("hidden_weight", "attention_weight")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def sweep_points(args: argparse.Namespace, points: list[Point]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains `points` as one sweep on every training text of the base models (a part's equal budget);
    returns the recorded points by id, and what every such part reports about the run."""
    registry, recipe, teacher, student = base_models(args)
    spec = SweepSpec(teacher.task, teacher.ref, recipe, tuple(points), fraction=1.0)
    started = time.monotonic()
    folder = run_sweep(registry, spec, on_point=lambda r, done, n: print(f"{done}/{n} {r['id']}", flush=True))
    recorded = {p["id"]: p for p in read_points(folder / POINTS_FILE)}
    spec_record = read_spec(folder)
    run = {
        "machine": _machine(),
        "sweep": str(folder),
        "wall_seconds": round(time.monotonic() - started, 1),
        "teacher": teacher.ref,
        "reference_student": student.ref,
        "references": spec_record["references"],
        "train_examples": spec_record["train_examples"],
        "recipe": {"examples": args.examples, "eval": None if args.full else args.eval, "full": args.full}
        | {name: getattr(recipe, name) for name in ("hidden_weight", "attention_weight")},
    }
    return recorded, run


def prune_bench(args: argparse.Namespace) -> dict[str, Any]:
    points = [p for cut, pruned in PAIRS for p in (cut, *pruned)]
    recorded, run = sweep_points(args, points)
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
    return run | {
        "points": {p.id: {f: recorded[p.id].get(f) for f in FIELDS} for p in points},
        "comparisons": comparisons,
    }


def losses_bench(args: argparse.Namespace) -> dict[str, Any]:
    points = grid(temperatures=(2.0,), alphas=(0.9,), layers=args.layers, losses=LOSS_SETS)
    recorded, run = sweep_points(args, points)
    comparisons = []
    for n in args.layers:
        control = recorded[Point(2.0, 0.9, n).id]
        for terms in LOSS_SETS[1:]:
            figures = recorded[Point(2.0, 0.9, n, losses=terms).id]
            comparisons.append(
                {"layers": n, "losses": "+".join(terms), "against": control["id"]}
                | {f"{field}_delta": _delta(figures, control, field) for field in DELTAS}
                | {"train_seconds_ratio": round(figures["train_seconds"] / control["train_seconds"], 2)}
            )
    return run | {
        "points": {p.id: {f: recorded[p.id].get(f) for f in LOSS_FIELDS} for p in points},
        "comparisons": comparisons,
    }


def via_bench(args: argparse.Namespace) -> dict[str, Any]:
    registry, recipe, teacher, reference = base_models(args)
    texts, beside = _control(registry, recipe, teacher, reference)
    started = time.monotonic()
    direct = {n: build_student(registry, replace(recipe, student_layers=n), teacher.ref) for n in args.layers}
    first, *others = args.layers
    assistant, via_first = build_progressive(
        registry, replace(recipe, student_layers=first), teacher.ref, args.via_layers, _log
    )
    # One assistant serves every student depth: the second step of `build_progressive`, repeated.
    via = {first: via_first} | {
        n: build_student(registry, replace(recipe, student_layers=n, via=assistant.ref), teacher.ref)
        for n in others
    }
    trained = time.monotonic() - started
    rows = {"teacher": _figures(registry, teacher, beside, texts)}
    rows["assistant"] = _figures(registry, assistant, beside, texts)
    for n in args.layers:
        rows[f"direct-L{n}"] = _figures(registry, direct[n], beside, texts)
        rows[f"via{args.via_layers}-L{n}"] = _figures(registry, via[n], beside, texts)
    comparisons = []
    for n in args.layers:
        a, b = rows[f"via{args.via_layers}-L{n}"], rows[f"direct-L{n}"]
        progressive = a["train_seconds"] + rows["assistant"]["train_seconds"]
        comparisons.append(
            {"layers": n}
            | {f"{field}_delta": _delta(a, b, field) for field in DELTAS}
            | {"train_seconds_direct": b["train_seconds"], "train_seconds_progressive": round(progressive, 1)}
            | {"served_direct": b["served"], "served_progressive": a["served"]}
        )
    return {
        "machine": _machine(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "train_wall_seconds": round(trained, 1),
        "teacher": teacher.ref,
        "reference_student": reference.ref,
        "reference_alone": {"p50_ms": round(beside[1].p50_ms, 3), "p99_ms": round(beside[1].p99_ms, 3)},
        "latency_texts": len(texts),
        "recipe": {
            "examples": args.examples,
            "eval": None if args.full else args.eval,
            "full": args.full,
            "layers": args.layers,
            "via_layers": args.via_layers,
            "epochs": recipe.student_epochs,
            "temperature": recipe.temperature,
            "alpha": recipe.alpha,
        },
        "models": rows,
        "comparisons": comparisons,
    }


def sweep_bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.full:  # the product's default build: its teacher and `classify-student@1`
        registry = Registry(args.state_dir)
        teacher, student = ensure_default_classify_models(registry, ClassifyRecipe())
    else:
        registry, _, teacher, student = base_models(args)
    # The CLI's own recipe for a sweep: each point on `fraction` of the whole training split.
    cap = {} if args.full else {"eval_examples": args.eval}
    recipe = ClassifyRecipe(student_examples=None, **cap)
    spec = SweepSpec(teacher.task, teacher.ref, recipe, tuple(grid()), fraction=args.fraction)
    trained: list[str] = []  # in this run: a resumed sweep times only the points it had left
    started = time.monotonic()

    def on_point(record: dict[str, Any], done: int, total: int) -> None:
        trained.append(record["id"])
        print(f"{done}/{total} {record['id']}", flush=True)

    folder = run_sweep(registry, spec, on_point=on_point)
    wall = time.monotonic() - started
    report, plot = write_report(folder)
    points = read_points(folder / POINTS_FILE)
    references = read_spec(folder)["references"]
    # The student the sweep was measured against when it began (a rerun's latest may be an earlier pick)
    student = registry.get(references["student"]["ref"])
    best_ids = frontier_ids(points, "agreement")
    knobs = {knob: _means_by(points, knob) for knob in ("temperature", "alpha", "layers")}
    spread = {knob: round(max(m.values()) - min(m.values()), 4) for knob, m in knobs.items()}
    rule = parse_rule(f"agreement max where p50_ms <= {references['student']['p50_ms']}")
    texts, beside = _control(registry, recipe, teacher, student)
    models = {"teacher": _figures(registry, teacher, beside, texts)}
    models["default"] = _figures(registry, student, beside, texts)
    try:
        picked = pick(registry, folder, rule, _log, GateConfig())
        models["picked"] = _figures(registry, picked, beside, texts)
        outcome: dict[str, Any] = {"registered": picked.ref, "gate": picked.metrics["gate"]}
    except Refused as refused:  # the figures of the refused student are in the gate's result
        outcome = {"registered": None, "gate": refused.result.to_dict()}
    return {
        "machine": _machine(),
        "sweep": folder.name,
        "report": str(report),
        "pareto_png": str(plot),
        "wall_seconds": round(wall, 1),
        "points": len(points),
        "points_trained_in_wall_seconds": len(trained),
        "train_examples": read_spec(folder)["train_examples"],
        "references": references,
        "frontier": [{k: p.get(k) for k in ("id", *FIELDS) if k in p} for p in points if p["id"] in best_ids],
        "best_agreement": max(points, key=lambda p: p["agreement"])["id"],
        "mean_agreement_by_knob": knobs,
        "knob_spread": spread,
        "pick": {"rule": str(rule), **outcome},
        "models": models,  # the builds' own test split; p50/p99 timed beside the default student
    }


def knobs_bench(args: argparse.Namespace) -> dict[str, Any]:
    registry = Registry(args.state_dir)
    (folder,) = sweeps_root(args.state_dir).iterdir()
    spec, outcome = read_spec(folder), json.loads((folder / PICK_FILE).read_text())
    teacher, default = registry.get(spec["teacher"]), registry.get(spec["reference"])
    picked = registry.get(outcome["registered"])
    knobs = {k: picked.lineage.recipe[k] for k in ("temperature", "alpha", "student_layers")}
    base = replace(base_recipe(default.lineage.recipe), int8_max_accuracy_drop=1.0)  # served INT8
    texts_of_pick = picked.lineage.data["sizes"]["train"]
    built = {
        "pick_knobs_default_texts": build_student(registry, replace(base, **knobs), teacher.ref, _log),
        "default_knobs_pick_texts": build_student(
            registry, replace(base, student_examples=texts_of_pick), teacher.ref, _log
        ),
    }
    texts, beside = _control(registry, base, teacher, default)
    models = {"default": _figures(registry, default, beside, texts)}
    models |= {name: _figures(registry, model, beside, texts) for name, model in built.items()}
    models["picked"] = _figures(registry, picked, beside, texts)
    return {
        "machine": _machine(),
        "sweep": folder.name,
        "pick_knobs": knobs,
        "default_knobs": {k: default.lineage.recipe[k] for k in knobs},
        "models": models,  # the builds' own test split; p50/p99 timed beside the default student
    }


def _means_by(points: list[dict[str, Any]], knob: str) -> dict[str, float]:
    values = sorted({p[knob] for p in points})
    return {
        str(v): round(
            sum(p["agreement"] for p in points if p[knob] == v) / sum(p[knob] == v for p in points), 4
        )
        for v in values
    }


def _control(
    registry: Registry, recipe: ClassifyRecipe, teacher: Manifest, reference: Manifest
) -> tuple[list[str], tuple[Session, Baseline]]:
    """Test texts to time on, and the reference student as the control every model is timed beside."""
    texts = load_split(recipe, teacher.labels).test.texts[:LATENCY_TEXTS]
    control = session_of(registry, reference)
    alone = measure(control, texts)
    return texts, (control, Baseline(alone.p50_ms, alone.p99_ms))


def _figures(
    registry: Registry, model: Manifest, beside: tuple[Session, Baseline], texts: list[str]
) -> dict[str, Any]:
    """A registered model's offline figures (from its manifest) and its latency beside the control."""
    metrics, calibration = model.metrics, model.calibration
    teacher = model.lineage.teacher is None  # the teacher agrees with itself, at KL 0
    return {
        "ref": model.ref,
        "via": model.lineage.via,
        "layers": None if teacher else model.lineage.recipe.get("student_layers"),
        "agreement": 1.0 if teacher else _rounded(metrics.get("agreement")),
        "kl": 0.0 if teacher else _rounded(metrics.get("mean_kl")),
        "accuracy": _rounded(metrics.get("test_accuracy")),
        "ece": _rounded(calibration.ece if calibration else None),
        "calibrated_ece": _rounded(calibration.calibrated_ece if calibration else None),
        **latency_figures(session_of(registry, model), beside, texts),
        "size_mb": round(onnx_file(registry, model).stat().st_size / MB, 2),
        "served": metrics.get("quantized", "fp32"),
        "train_seconds": metrics.get("train_seconds"),
        "train_examples": model.lineage.data.get("sizes", {}).get("train"),
    }


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def _delta(a: dict[str, Any], b: dict[str, Any], field: str) -> float | None:
    if a.get(field) is None or b.get(field) is None:
        return None
    return round(a[field] - b[field], 4)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _table(result: dict[str, Any]) -> str:
    columns: tuple[str, ...] = (
        "agreement",
        "kl",
        "accuracy",
        "ece",
        "calibrated_ece",
        "p50_ms",
        "p99_ms",
        "size_mb",
    )
    columns += ("served", "train_seconds")
    lines = ["model".ljust(14) + "".join(c[:10].rjust(11) for c in columns)]
    for name, row in result["models"].items():
        cells = ("-" if row[c] is None else str(row[c]) for c in columns)
        lines.append(name.ljust(14) + "".join(cell.rjust(11) for cell in cells))
    return "\n".join(lines)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--state-dir", type=Path, help="registry of the teacher (default /tmp/kdgate-<part>)")
    shared.add_argument("--examples", type=int, default=1600, help="training texts of every model")
    shared.add_argument("--eval", type=int, default=500, help="validation/test texts (without --full)")
    shared.add_argument("--full", action="store_true", help="the default teacher and evaluation splits")
    parts = parser.add_subparsers(dest="part", required=True)
    parts.add_parser("prune", parents=[shared], help="pruned students against cut students")
    losses = parts.add_parser("losses", parents=[shared], help="logits-only KD against + hidden, + attention")
    losses.add_argument("--layers", type=int, nargs="+", default=[2], help="student depths, each loss set")
    losses.add_argument("--hidden-weight", type=float, help="the hidden-state term's weight (recipe: 1)")
    losses.add_argument("--attention-weight", type=float, help="the attention term's weight (recipe: 1)")
    via = parts.add_parser("via", parents=[shared], help="direct KD against KD via an assistant")
    via.add_argument("--layers", type=int, nargs="+", default=[2], help="student depths, each both ways")
    via.add_argument("--via-layers", type=int, default=4, help="the assistant's depth")
    sweep = parts.add_parser("sweep", parents=[shared], help="the default sweep, its frontier and a pick")
    sweep.add_argument("--fraction", type=float, default=0.1, help="share of the training texts per point")
    parts.add_parser("knobs", parents=[shared], help="after sweep: the pick's knobs and texts one at a time")
    args = parser.parse_args()
    args.state_dir = args.state_dir or Path(f"/tmp/kdgate-{args.part}")
    # Refused before the teacher trains: every student depth must sit below the assistant's.
    problem = via_layers_problem(args.via_layers, max(args.layers)) if args.part == "via" else None
    if problem is not None:
        parser.error(problem)
    parts_run = {
        "prune": prune_bench,
        "losses": losses_bench,
        "via": via_bench,
        "sweep": sweep_bench,
        "knobs": knobs_bench,
    }
    result = parts_run[args.part](args)
    print(json.dumps(result, indent=2))
    if args.part in ("via", "sweep", "knobs"):
        print(_table(result))
    RESULTS.mkdir(exist_ok=True)
    size = (
        "full"
        if args.part in ("sweep", "knobs") and args.full
        else f"{args.examples}{'_full' if args.full else ''}"
    )
    weights = "".join(f"_{name.split('_')[0]}{value:g}" for name, value in feature_weights(args).items())
    name = f"bench_workbench_{args.part}_{size}{weights}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
