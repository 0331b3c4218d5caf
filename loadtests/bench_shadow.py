"""What shadow scoring costs the client, and what a shadow record costs on disk.

    .venv/bin/python -m loadtests.bench_shadow --state-dir .kdgate

Student at 100% of /classify traffic, concurrency 8, shadow at 0% vs 100% (the teacher re-scores every
request in the background on the same 2 cores), the shadow thread niced and in SCHED_IDLE (the
default) or only niced (`shadow_idle_class=false`); for each, the share of served requests the
shadow compared (the rest were dropped from its bounded queue). Then bytes per record of the Parquet
log: whole record and the teacher payload column alone. Writes loadtests/results/bench_shadow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from distill.classify_build import STUDENT_NAME, TEACHER_NAME, ClassifyRecipe, load_split
from distill.registry import Registry
from loadtests._server import admin_headers, gateway, scratch_copy
from loadtests.bench_gateway import load


def wait_for_shadow_idle(url: str, timeout: float = 120.0) -> None:
    """Until the shadow queue has drained (compared + dropped stops moving)."""
    last, deadline = -1.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{url}/metrics").text.splitlines()
            if line.startswith("kdgate_shadow_total{")
        )
        if total == last:
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


def log_size(shadow_dir: Path) -> dict[str, float]:
    files = sorted(shadow_dir.rglob("seg-*.parquet"))
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_shadow.json"))
    args = parser.parse_args()
    registry = Registry(args.state_dir)
    student, teacher = registry.latest(STUDENT_NAME), registry.latest(TEACHER_NAME)
    if student is None or teacher is None:
        raise SystemExit(f"no default models in {args.state_dir}; run `kdgate serve` once first")
    texts = load_split(ClassifyRecipe()).test.texts[:1000]
    report: dict[str, object] = {
        "student": student.ref,
        "teacher": teacher.ref,
        "concurrency": args.concurrency,
    }
    variants: dict[str, dict[str, object]] = {
        "shadow_off": {"shadow_enabled": False},
        "shadow_on": {"shadow_enabled": True},
        "shadow_on_nice_only": {"shadow_enabled": True, "shadow_idle_class": False},
    }
    for label, settings in variants.items():
        enabled = bool(settings["shadow_enabled"])
        with scratch_copy(args.state_dir) as state:
            with gateway(state, **settings) as url:
                httpx.put(
                    f"{url}/admin/traffic/classify",
                    json={"weights": {student.ref: 100}},
                    headers=admin_headers(state),
                ).raise_for_status()
                result = asyncio.run(load(url, texts, args.concurrency, args.requests, None))
                result.pop("latencies_ms")
                result.pop("timings")
                report[label] = result
                if enabled:
                    wait_for_shadow_idle(url)
                    outcomes = shadow_outcomes(url)
                    result["shadow_outcomes"] = outcomes
                    served = outcomes.get("compared", 0.0) + outcomes.get("dropped", 0.0)
                    result["observed_shadow_rate"] = outcomes.get("compared", 0.0) / max(served, 1.0)
            if label == "shadow_on":  # the gateway has stopped gracefully: everything is flushed
                report["shadow_log"] = log_size(state / "shadow")
    off = report["shadow_off"]
    assert isinstance(off, dict)
    for label in ("shadow_on", "shadow_on_nice_only"):
        on = report[label]
        assert isinstance(on, dict)
        on["p99_increase_pct"] = 100.0 * (on["p99_ms"] / off["p99_ms"] - 1.0)
        on["p50_increase_pct"] = 100.0 * (on["p50_ms"] / off["p50_ms"] - 1.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
