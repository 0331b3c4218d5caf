"""What shadow scoring costs the client, and what a shadow record costs on disk.

    .venv/bin/python -m loadtests.bench_shadow --state-dir .kdgate

Student at 100% of /classify traffic, concurrency 8, shadow off vs on with the defaults (SCHED_IDLE, nice
10, a fixed CPU budget of 0.25 core) vs on with the opt-in budget that grows while serving is quiet vs on
without the budget (SCHED_IDLE alone); `--variants` chooses among them and adds the controls (without
SCHED_IDLE; fixed budgets of 0.1 and 0.05 core). All gateways are up at once and the rounds alternate
between them (rotated order), so drift of the machine hits all alike. Latencies are pooled per variant;
the p99 of each round is kept too, and the median over rounds of each round's p99 against shadow-off's p99
in the same round, which the round-to-round noise moves less than the pooled figure. Two clients: `lean`
(raw keep-alive HTTP/1.1 from threads, which leaves the 2 cores to the gateway) and `httpx` (its async
client took about a core at c=8 here, and its own tail shows in p99). For each shadow variant, the share
of served requests the shadow compared (the rest were dropped from its bounded queue and counted). Then
bytes per record of the Parquet log: whole record and the teacher payload column alone. Writes
loadtests/results/bench_shadow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from distill.classify.build import STUDENT_NAME, TEACHER_NAME, load_split
from distill.classify.recipe import ClassifyRecipe
from distill.registry import Registry
from loadtests._server import admin_headers, gateway, scratch_copy
from loadtests.bench_gateway import lean_load, load, summary


def wait_for_shadow_idle(url: str, timeout: float = 300.0) -> None:
    """Until both shadow queues are empty and compared + dropped has stopped moving: a backlog scored
    under the CPU budget would otherwise run into the next measurement."""
    last, deadline = -1.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = httpx.get(f"{url}/metrics").text.splitlines()
        queued = sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("kdgate_shadow_queued{"))
        total = sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("kdgate_shadow_total{"))
        if queued == 0 and total == last:
            return
        last = total
        time.sleep(1.0)


def shadow_outcomes(url: str) -> dict[str, float]:
    """Texts compared and dropped by the shadow, from the gateway's own counters."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("kdgate_shadow_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def log_size(shadow_dir: Path, skip_suffix: str | None = None) -> dict[str, float]:
    """Records, segments and bytes per record in the log; `skip_suffix` leaves out segments whose names
    end with it (another writer's)."""
    files = sorted(
        f for f in shadow_dir.rglob("seg-*.parquet") if not skip_suffix or not f.name.endswith(skip_suffix)
    )
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    total = sum(f.stat().st_size for f in files)
    payload = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                if column.path_in_schema.startswith("teacher_logits"):
                    payload += column.total_compressed_size
    return {
        "records": rows,
        "segments": len(files),
        "bytes_per_record": total / max(rows, 1),
        "teacher_payload_bytes_per_record": payload / max(rows, 1),
    }


VARIANTS: dict[str, dict[str, object]] = {  # shadow_off and shadow_on are always measured
    "shadow_off": {"shadow_enabled": False},
    "shadow_on": {"shadow_enabled": True},  # the defaults: SCHED_IDLE, nice 10, a fixed CPU budget
    # The opt-in budget that grows while serving is quiet (shadow_idle_cpu).
    "shadow_on_growing_budget": {"shadow_enabled": True, "shadow_idle_cpu": 1.0},
    # A budget of a whole core never pauses the one-threaded shadow teacher: SCHED_IDLE alone.
    "shadow_on_no_budget": {"shadow_enabled": True, "shadow_max_cpu": 1.0},
}
CONTROLS: dict[str, dict[str, object]] = {  # only on request (--variants)
    "shadow_on_nice_only": {"shadow_enabled": True, "shadow_idle_class": False, "shadow_max_cpu": 1.0},
    # Smaller fixed budgets: what the shadow's CPU costs served p99, per tenth of a core.
    "shadow_on_budget_0.1": {"shadow_enabled": True, "shadow_max_cpu": 0.1},
    "shadow_on_budget_0.05": {"shadow_enabled": True, "shadow_max_cpu": 0.05},
}


def run_load(client: str, url: str, texts: list[str], concurrency: int, requests: int) -> list[float]:
    if client == "lean":
        return list(lean_load(url, texts, concurrency, requests)["latencies_ms"])
    return list(asyncio.run(load(url, texts, concurrency, requests, None))["latencies_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=2000, help="per variant, client and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--clients", nargs="+", choices=("lean", "httpx"), default=["lean", "httpx"])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS | CONTROLS),
        default=list(VARIANTS),
        help="which to measure besides shadow_off and shadow_on (default: all but the nice-only control)",
    )
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_shadow.json"))
    args = parser.parse_args()
    wanted = {"shadow_off", "shadow_on", *args.variants}
    variants = {name: cfg for name, cfg in (VARIANTS | CONTROLS).items() if name in wanted}
    registry = Registry(args.state_dir)
    student, teacher = registry.latest(STUDENT_NAME), registry.latest(TEACHER_NAME)
    if student is None or teacher is None:
        raise SystemExit(f"no default models in {args.state_dir}; run `kdgate serve` once first")
    texts = load_split(ClassifyRecipe()).test.texts[:1000]
    series: dict[tuple[str, str], list[float]] = {(v, c): [] for v in variants for c in args.clients}
    round_p99: dict[tuple[str, str], list[float]] = {key: [] for key in series}
    outcomes: dict[str, dict[str, float]] = {}
    # Texts compared while the load ran: the backlog scored afterwards (before the next round) is not
    # what the budget lets the shadow keep up with under this load.
    compared_during_load = dict.fromkeys(variants, 0.0)
    with contextlib.ExitStack() as scratch:
        states = {v: scratch.enter_context(scratch_copy(args.state_dir)) for v in variants}
        with contextlib.ExitStack() as servers:  # all up at once; rounds alternate between them
            urls = {v: servers.enter_context(gateway(states[v], **variants[v])) for v in variants}
            for variant, url in urls.items():
                httpx.put(
                    f"{url}/admin/traffic/classify",
                    json={"weights": {student.ref: 100}},
                    headers=admin_headers(states[variant]),
                ).raise_for_status()
                run_load("lean", url, texts, args.concurrency, 100)  # warm-up
                wait_for_shadow_idle(url)
            names = list(variants)
            for r in range(args.rounds):
                for variant in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
                    for client in args.clients:
                        chunk = texts[(r * 97) % len(texts) :] + texts
                        before = shadow_outcomes(urls[variant]).get("compared", 0.0)
                        got = run_load(client, urls[variant], chunk, args.concurrency, args.requests)
                        compared_during_load[variant] += (
                            shadow_outcomes(urls[variant]).get("compared", 0.0) - before
                        )
                        series[variant, client] += got
                        round_p99[variant, client].append(float(np.percentile(got, 99)))
                        wait_for_shadow_idle(urls[variant])  # the next measurement starts quiet
            outcomes = {v: shadow_outcomes(urls[v]) for v in variants if variants[v]["shadow_enabled"]}
        # The gateways have stopped gracefully: everything is flushed.
        shadow_log = log_size(states["shadow_on"] / "shadow")
    report: dict[str, object] = {
        "student": student.ref,
        "teacher": teacher.ref,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
    }
    for client in args.clients:
        off = summary(series["shadow_off", client], 1.0)
        per_client: dict[str, object] = {}
        for variant in variants:
            pooled = summary(series[variant, client], 1.0)
            pooled.pop("throughput_rps")  # pooled over rounds: no single wall time
            if variant != "shadow_off":
                pooled["p50_increase_pct"] = 100.0 * (pooled["p50_ms"] / off["p50_ms"] - 1.0)
                pooled["p99_increase_pct"] = 100.0 * (pooled["p99_ms"] / off["p99_ms"] - 1.0)
                ratios = np.divide(round_p99[variant, client], round_p99["shadow_off", client])
                pooled["p99_increase_pct_median_of_rounds"] = 100.0 * (float(np.median(ratios)) - 1.0)
            per_client[variant] = {**pooled, "p99_ms_per_round": round_p99[variant, client]}
        report[f"client_{client}"] = per_client
    for variant, counts in outcomes.items():
        served = counts.get("compared", 0.0) + counts.get("dropped", 0.0)
        report[f"{variant}_shadow"] = {
            "outcomes": counts,
            "observed_shadow_rate": counts.get("compared", 0.0) / max(served, 1.0),
            "compared_during_load": compared_during_load[variant],
            "shadow_rate_during_load": compared_during_load[variant] / max(served, 1.0),
        }
    report["shadow_log"] = shadow_log
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
