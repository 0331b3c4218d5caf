"""What shadowing costs the client, measured inside one gateway process: shadow at 0% vs 100%.

    .venv/bin/python -m loadtests.bench_shadow_ab --state-dir .kdgate

Why one process: two identical gateway processes differed here by up to 8% in CPU per request and
14.5-24.4 ms in round p99, more than the 5% to resolve, so a bench that compares processes
(`bench_shadow.py`, kept for settings that need a restart) measures which process it got. Here one
gateway serves the student at 100% of /classify with the default shadow (SCHED_IDLE teacher process,
fixed CPU budget), and the rounds switch the student's shadow rate between 0 and 1 at run time
(`PUT /admin/shadow/classify`) in the order off, on, on, off, off, on, … (linear drift cancels). Before
each round the shadow's backlog is drained, so an off round never carries the teacher's work of the on
round before it. The shadow queue is 64 deep (default 1024): at this load the teacher cannot keep up and
the queue is full within a second of every on round either way; a short queue only shortens the drain.

Reported: pooled p50/p99 per rate and their increase; the median over pairs of rounds of the on/off
round-p99 ratio; a 95% bootstrap interval of the pooled p99 increase (pairs of rounds resampled); the
share of served requests the shadow compared during the on rounds; bytes per shadow record.
`--shadow-max-cpu` measures another CPU budget the same way (a budget is fixed at start: one gateway
per budget, each compared with itself). `--prefill-segments N` starts the gateway on a full log: N
segments already on disk and a retention cap at their total, so every flush during the rounds also
deletes the oldest segment, as on a gateway that has been serving for days (hard links to one real
segment: instant, no disk). Writes loadtests/results/bench_shadow_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from distill.classify.build import STUDENT_NAME, load_split
from distill.classify.recipe import ClassifyRecipe
from distill.registry import Registry
from distill.shadowlog.segments import list_segments, segment_name, task_dir
from distill.shadowlog.writer import ShadowLogWriter
from loadtests._server import admin_headers, gateway, scratch_copy
from loadtests.bench_gateway import lean_load
from loadtests.bench_shadow import log_size, shadow_outcomes, wait_for_shadow_idle

QUEUE_SIZE = 64
PREFILL_WRITER = "0000beef"  # the writer id in prefilled segments' names


def increase_pct(on: np.ndarray, off: np.ndarray, q: float) -> float:
    return 100.0 * (float(np.percentile(on, q)) / float(np.percentile(off, q)) - 1.0)


def bootstrap_p99_increase(
    pairs: list[tuple[np.ndarray, np.ndarray]], samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the pooled p99 increase, resampling whole pairs of rounds (requests within a round
    are not independent: a stall delays every request in flight)."""
    rng = np.random.default_rng(seed)
    got = []
    for _ in range(samples):
        picked = rng.integers(0, len(pairs), len(pairs))
        on = np.concatenate([pairs[i][0] for i in picked])
        off = np.concatenate([pairs[i][1] for i in picked])
        got.append(increase_pct(on, off, 99))
    low, high = np.percentile(got, [2.5, 97.5])
    return float(low), float(high)


def prefill_log(state: Path, segments: int, records_per_segment: int = 48) -> int:
    """Puts `segments` classify segments of `records_per_segment` records under `state`/shadow, dated
    one a second up to a minute ago; returns their total size in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        seed = ShadowLogWriter(tmp, "classify", flush_rows=records_per_segment)
        for i in range(records_per_segment):
            seed.append(
                {
                    "request_id": f"prefill-{i}",
                    "served_model": "classify-student@1",
                    "teacher_model": "classify-teacher@1",
                    "input_text": f"a tweet of typical length, number {i}, about a phone and the weather",
                    "served_label": "positive",
                    "served_probs": [0.1, 0.2, 0.7],
                    "teacher_logits": [-1.0, 0.5, 2.0],
                    "agree": True,
                    "kl": 0.01,
                    "latency_ms": 5.0,
                }
            )
        seed.close()
        fs, directory = task_dir(tmp, "classify")
        (source,) = list_segments(fs, directory)
        target = state / "shadow" / "classify"
        target.mkdir(parents=True)
        newest_ms = round((time.time() - 60) * 1000)
        for n in range(segments):
            name = segment_name(newest_ms - 1000 * (segments - n), n, PREFILL_WRITER)
            os.link(source.path, target / name)
    return segments * source.size


def measure(
    url: str,
    headers: dict[str, str],
    student: str,
    texts: list[str],
    args: argparse.Namespace,
    rounds: dict[float, list[np.ndarray]],
) -> tuple[float, float]:
    """Runs the rounds into `rounds` (latencies per shadow rate); served and compared in the on rounds."""

    def set_rate(rate: float) -> None:
        body = {"rates": {student: rate}}
        httpx.put(f"{url}/admin/shadow/classify", json=body, headers=headers).raise_for_status()

    split = {"weights": {student: 100}}
    httpx.put(f"{url}/admin/traffic/classify", json=split, headers=headers).raise_for_status()
    lean_load(url, texts, args.concurrency, 300)  # warm-up
    on_served = on_compared = 0.0
    for i in range(2 * args.pairs):
        rate = 1.0 if i % 4 in (1, 2) else 0.0  # off, on, on, off, …
        set_rate(rate)
        wait_for_shadow_idle(url)
        chunk = texts[(i * 97) % len(texts) :] + texts
        before = shadow_outcomes(url).get("compared", 0.0)
        latencies = np.asarray(lean_load(url, chunk, args.concurrency, args.requests)["latencies_ms"])
        rounds[rate].append(latencies)
        if rate:
            on_served += len(latencies)
            on_compared += shadow_outcomes(url).get("compared", 0.0) - before
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"round {i + 1:2d} shadow {rate:.0%}: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    set_rate(1.0)  # the last on round's backlog is scored and logged before the stop
    wait_for_shadow_idle(url)
    return on_served, on_compared


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--pairs", type=int, default=12, help="pairs of rounds (one off, one on)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--shadow-max-cpu",
        type=float,
        default=None,
        help="the shadow teacher's CPU budget in cores (default: the gateway's default, 0.25); 1 = none",
    )
    parser.add_argument(
        "--prefill-segments",
        type=int,
        default=0,
        help="start on a full log: this many segments on disk, retention capped at their size",
    )
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_shadow_ab.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    student = Registry(args.state_dir).latest(STUDENT_NAME)
    if student is None:
        raise SystemExit(f"no student in {args.state_dir}; run `kdgate serve` once first")
    texts = load_split(ClassifyRecipe()).test.texts[:1000]
    rounds: dict[float, list[np.ndarray]] = {0.0: [], 1.0: []}
    with scratch_copy(args.state_dir) as state:
        extra: dict[str, float] = {}
        if args.shadow_max_cpu is not None:
            extra["shadow_max_cpu"] = args.shadow_max_cpu
        if args.prefill_segments:
            extra["shadow_max_bytes"] = prefill_log(state, args.prefill_segments)
        with gateway(state, shadow_queue_size=QUEUE_SIZE, **extra) as url:
            on_served, on_compared = measure(url, admin_headers(state), student.ref, texts, args, rounds)
        # The gateway has stopped gracefully: all flushed.
        shadow_log = log_size(state / "shadow", skip_suffix=f"-{PREFILL_WRITER}.parquet")
        prefill_left = len(list((state / "shadow").rglob(f"*-{PREFILL_WRITER}.parquet")))
    on, off = np.concatenate(rounds[1.0]), np.concatenate(rounds[0.0])
    pairs = list(zip(rounds[1.0], rounds[0.0], strict=True))
    ratios = [float(np.percentile(a, 99) / np.percentile(b, 99)) for a, b in pairs]
    report = {
        "student": student.ref,
        "concurrency": args.concurrency,
        "pairs": args.pairs,
        "requests_per_round": args.requests,
        "shadow_queue_size": QUEUE_SIZE,
        "shadow_max_cpu": args.shadow_max_cpu or "default (0.25)",
        "prefilled_segments": args.prefill_segments,
        "prefilled_segments_deleted_by_retention": args.prefill_segments - prefill_left,
        "shadow_0": {"p50_ms": float(np.percentile(off, 50)), "p99_ms": float(np.percentile(off, 99))},
        "shadow_100": {"p50_ms": float(np.percentile(on, 50)), "p99_ms": float(np.percentile(on, 99))},
        "p50_increase_pct": increase_pct(on, off, 50),
        "p99_increase_pct": increase_pct(on, off, 99),
        "p99_increase_pct_95ci": bootstrap_p99_increase(pairs),
        "p99_increase_pct_median_of_pairs": 100.0 * (float(np.median(ratios)) - 1.0),
        "round_p99_ms": {
            "shadow_0": [float(np.percentile(r, 99)) for r in rounds[0.0]],
            "shadow_100": [float(np.percentile(r, 99)) for r in rounds[1.0]],
        },
        "shadow_rate_during_on_rounds": on_compared / max(on_served, 1.0),
        "shadow_log": shadow_log,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "round_p99_ms"}, indent=2))


if __name__ == "__main__":
    main()
