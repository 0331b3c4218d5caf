"""What `kdgate serve --workers 2` buys on student traffic, against one worker and the peer controls, in
one run on the same model file.

    .venv/bin/python -m loadtests.bench_workers --state-dir .kdgate

Servers, all up at once and measured in alternating rounds so drift of the machine hits all alike:
`kdgate serve` with 1 and with 2 workers (the split at 100% on the student, shadow off), the plainest
FastAPI wrapper of the same student file (`loadtests/plain_wrapper.py`) and the no-framework floor
(`loadtests/raw_wrapper.py`); then both gateways again with the shadow on (the teacher scoring sampled
student traffic), for the p99 cost of shadowing; after each of those the bench waits for the shadow to
work off its backlog, which would otherwise load the next measurement. Each measurement is
`--requests` POST /classify from `concurrency` keep-alive connections (`lean_load`: one connection
per client thread, so at c=1 one worker answers everything: SO_REUSEPORT spreads connections, not
requests).

With `--baseline-tree`, the kdgate of another source tree (a git worktree of an older commit) with 1
worker joins the rounds too, so a change to the request path is measured against it in the same run:

    git worktree add /tmp/oldtree <commit>
    .venv/bin/python -m loadtests.bench_workers --state-dir /tmp/tiny --baseline-tree /tmp/oldtree

Targets (issue #20): workers=1 at least the plain wrapper's throughput at every c; workers=2 at least
1.3x workers=1 at c=32; shadow on, p99 at most 1.2x shadow off at c=32.
Writes loadtests/results/bench_workers.json. Client and servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from distill.classify.build import load_split
from distill.classify.recipe import ClassifyRecipe
from loadtests._server import admin_headers, control, gateway, scratch_copy
from loadtests.bench_gateway import lean_load

CONCURRENCY = (1, 8, 32)


def serving_student(url: str, state_dir: Path, student: str, workers: int) -> None:
    """The split at 100% on `student`, once every worker answers on the port."""
    headers = admin_headers(state_dir)
    put = httpx.put(f"{url}/admin/traffic/classify", json={"weights": {student: 100}}, headers=headers)
    put.raise_for_status()
    deadline = time.monotonic() + 120
    while (
        len({httpx.get(f"{url}/admin/process", headers=headers).json()["pid"] for _ in range(20)}) < workers
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers did not all answer on {url}")
        time.sleep(0.5)


def shadow_backlog(url: str) -> float:
    """Items the gateway's /classify shadow still has to score or log (`kdgate_shadow_queued`)."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("kdgate_shadow_queued{"))


def settle(url: str, timeout_s: float = 900) -> None:
    """Waits until a shadowing gateway has worked off its backlog. Its teacher scores the traffic of the
    measurement just taken for a while after it, on cores left idle (its budget grows with them), and
    would otherwise load the next measurement, of whichever server comes next."""
    deadline = time.monotonic() + timeout_s
    while shadow_backlog(url) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shadow of {url} did not drain in {timeout_s:.0f} s")
        time.sleep(0.5)
    time.sleep(1.0)  # the batch the teacher took last


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about, from the medians over rounds."""
    rps = {name: {int(c[1:]): r["throughput_rps"] for c, r in runs.items()} for name, runs in result.items()}
    p99 = {name: runs["c32"]["p99_ms"] for name, runs in result.items()}
    out = {
        f"workers1_over_plain_c{c}": rps["kdgate_workers_1"][c] / rps["plain_fastapi"][c] for c in CONCURRENCY
    }
    if "kdgate_baseline_workers_1" in rps:
        for c in CONCURRENCY:
            baseline = rps["kdgate_baseline_workers_1"][c]
            out[f"workers1_over_baseline_c{c}"] = rps["kdgate_workers_1"][c] / baseline
    out["workers2_over_workers1_c32"] = rps["kdgate_workers_2"][32] / rps["kdgate_workers_1"][32]
    for workers in (1, 2):
        shadowed = p99.get(f"kdgate_workers_{workers}_shadow_on")
        if shadowed is not None:
            out[f"workers{workers}_p99_shadow_on_over_off_c32"] = shadowed / p99[f"kdgate_workers_{workers}"]
    return out


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("throughput_rps", "p50_ms", "p99_ms")
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in keys} | {
        "rounds": [{k: r[k] for k in keys} for r in runs]
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--student", default="classify-student@1")
    parser.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, help="also an older kdgate (1 worker), for A/B")
    parser.add_argument("--note", default="", help="what the figures were taken on, kept with them")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_workers.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = load_split(ClassifyRecipe()).test.texts[:500]
    with ExitStack() as stack:
        urls: dict[str, str] = {}
        for workers in (1, 2):
            for shadow in (False, True):
                state = stack.enter_context(scratch_copy(args.state_dir))  # a store of its own each
                url = stack.enter_context(
                    gateway(state, workers=workers, shadow_enabled=shadow, max_in_flight=256)
                )
                serving_student(url, state, args.student, workers)
                urls[f"kdgate_workers_{workers}" + ("_shadow_on" if shadow else "")] = url
        if args.baseline_tree is not None:
            state = stack.enter_context(scratch_copy(args.state_dir))
            url = stack.enter_context(gateway(state, tree=args.baseline_tree, max_in_flight=256))
            serving_student(url, state, args.student, 1)
            urls["kdgate_baseline_workers_1"] = url
        urls["plain_fastapi"] = stack.enter_context(
            control("loadtests.plain_wrapper", args.state_dir, args.student)
        )
        urls["raw_floor"] = stack.enter_context(
            control("loadtests.raw_wrapper", args.state_dir, args.student)
        )
        for url in urls.values():  # warm-up: every worker's connections, every model's first calls
            lean_load(url, texts, 8, 200)
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in CONCURRENCY} for n in urls}
        names = list(urls)
        for round_ in range(args.rounds):
            # Each round starts one server further on, so an effect of the position in a round hits every
            # server alike (in a run with a fixed order, the server always measured first at c=1 was the
            # only one ~10% below its A/B figure).
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for concurrency in CONCURRENCY:
                for name in order:
                    url = urls[name]
                    if name.endswith("_shadow_on") and concurrency != 32:
                        continue
                    result = lean_load(url, texts, concurrency, args.requests)
                    result.pop("latencies_ms")
                    runs[name][concurrency].append(result)
                    if name.endswith("_shadow_on"):
                        settle(url)
    result = {name: {f"c{c}": median_runs(r) for c, r in by_c.items() if r} for name, by_c in runs.items()}
    report = {
        "results": result,
        "ratios": ratios(result),
        "setup": {
            "student": args.student,
            "requests": args.requests,
            "rounds": args.rounds,
            "baseline_tree": None if args.baseline_tree is None else str(args.baseline_tree),
            "note": args.note,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
