"""Seconds from starting `kdgate serve` to its first ready answer (`/readyz` 200), beside the plain FastAPI
wrapper of the same student file (`loadtests/plain_wrapper.py`, to `/healthz` 200) as the control: a
process start that any Python server of this model pays (interpreter, uvicorn, onnxruntime, the model
load). With `--baseline-tree`, the kdgate of another source tree (a git worktree of an older commit)
too, so a change's effect is measured against the control in the same run.

What it matters for: every worker of `--workers N` and every replica pays it when it starts or is
restarted after a crash, and a state of ONNX classifiers needs neither torch nor transformers.

    git worktree add /tmp/oldtree <commit>
    .venv/bin/python -m loadtests.bench_start --state-dir /tmp/tiny --rounds 7 --baseline-tree /tmp/oldtree

Rounds alternate the servers (kdgate, control, baseline, kdgate, …), one at a time, polling every
20 ms; medians and every sample go to loadtests/results/bench_start.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from distill.registry import Registry, Role
from loadtests._server import control, gateway

RESULTS = Path(__file__).parent / "results"
POLL_S = 0.02


def seconds_to_ready(start: Callable[[], AbstractContextManager[str]]) -> float:
    began = time.monotonic()
    with start():
        return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="a state of classify models")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-tree", type=Path, help="another source tree's kdgate, measured too")
    args = parser.parse_args()
    student = Registry(args.state_dir).latest_of("classify", Role.STUDENT)
    if student is None:
        parser.error(f"{args.state_dir} has no classify student")
    servers: dict[str, Callable[[], AbstractContextManager[str]]] = {
        "kdgate": lambda: gateway(args.state_dir, poll_s=POLL_S, shadow_enabled=False),
        "plain_fastapi": lambda: control("loadtests.plain_wrapper", args.state_dir, student.ref, POLL_S),
    }
    if args.baseline_tree is not None:
        tree = args.baseline_tree.resolve()
        servers["kdgate_baseline"] = lambda: gateway(
            args.state_dir, poll_s=POLL_S, tree=tree, shadow_enabled=False
        )
    samples: dict[str, list[float]] = {name: [] for name in servers}
    for round_ in range(args.rounds):
        for name, start in servers.items():
            samples[name].append(round(seconds_to_ready(start), 3))
        print(
            f"round {round_ + 1}/{args.rounds}: "
            + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in samples.items())
        )
    medians = {name: round(statistics.median(s), 3) for name, s in samples.items()}
    result: dict[str, Any] = {
        "state_dir": str(args.state_dir),
        "models": [m.ref for m in Registry(args.state_dir).list()],
        "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
        "rounds": args.rounds,
        "median_seconds": medians,
        "kdgate_over_plain": round(medians["kdgate"] / medians["plain_fastapi"], 2),
        "samples": samples,
    }
    if "kdgate_baseline" in medians:
        result["baseline_over_plain"] = round(medians["kdgate_baseline"] / medians["plain_fastapi"], 2)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_start.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
