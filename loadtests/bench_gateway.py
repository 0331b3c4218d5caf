"""Gateway overhead and throughput on /classify with a real `kdgate serve` subprocess.

    .venv/bin/python -m loadtests.bench_gateway --state-dir .kdgate

1. Overhead at concurrency 1: HTTP p50/p99 minus in-process p50/p99 of the same model (teacher, pinned).
   The two alternate in rounds while one server is up, so drift of the machine hits both alike; the
   HTTP floor (GET /healthz: client, loopback, uvicorn, no model) is reported beside it.
2. Teacher at 100%: latency and throughput at concurrency 8 and 32, micro-batching on (max batch 32)
   without waiting (work-conserving, the default) and with a 2 ms wait, vs off (max batch 1).
Writes loadtests/results/bench_gateway.json. Client and server share the 2 cores: figures include that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from distill.classify_build import TEACHER_NAME, ClassifyRecipe, load_split
from distill.registry import Registry
from distill.runners import Runner, load_runner
from loadtests._server import gateway


def summary(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    """Latency percentiles and throughput (requests over the wall time they took)."""
    return {
        "requests": len(latencies_ms),
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "throughput_rps": len(latencies_ms) / seconds,
    }


async def load(
    url: str, texts: list[str], concurrency: int, requests: int, pin: str | None
) -> dict[str, Any]:
    latencies: list[float] = []
    counter = iter(range(requests))
    headers = {"x-kdgate-model": pin} if pin else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                r = await client.post("/classify", json={"text": texts[i % len(texts)]}, headers=headers)
                r.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

        for text in texts[:20]:  # warm-up
            await client.post("/classify", json={"text": text}, headers=headers)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {**summary(latencies, elapsed), "latencies_ms": latencies}


def in_process(runner: Runner, texts: list[str], requests: int) -> list[float]:
    latencies = []
    for i in range(requests):
        t0 = time.perf_counter()
        runner.predict_logits([texts[i % len(texts)]])
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


async def http_floor(url: str, requests: int) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(requests):
            started = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def overhead(
    state_dir: Path, ref: str, texts: list[str], requests: int, rounds: int = 4
) -> dict[str, object]:
    runner = load_runner(Registry(state_dir), ref, threads=1, prefer_onnx=True)  # as served (teacher_runtime)
    in_process(runner, texts[:20], 20)  # warm-up
    direct: list[float] = []
    http: list[float] = []
    floor: list[float] = []
    with gateway(state_dir, max_in_flight=256) as url:
        per_round = max(requests // rounds, 1)
        for r in range(rounds):
            chunk = texts[(r * per_round) % len(texts) :] + texts
            direct += in_process(runner, chunk, per_round)
            http += asyncio.run(load(url, chunk, 1, per_round, ref))["latencies_ms"]
            floor += asyncio.run(http_floor(url, per_round // 4))
    d, h = summary(direct, sum(direct) / 1000), summary(http, sum(http) / 1000)
    return {
        "in_process": d,
        "http": h,
        "http_floor_healthz": summary(floor, sum(floor) / 1000),
        "overhead_p50_ms": h["p50_ms"] - d["p50_ms"],
        "overhead_p99_ms": h["p99_ms"] - d["p99_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_gateway.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    registry = Registry(args.state_dir)
    teacher = registry.latest(TEACHER_NAME)
    if teacher is None:
        raise SystemExit(f"no teacher in {args.state_dir}; run `kdgate serve` once first")
    texts = load_split(ClassifyRecipe()).test.texts[:500]

    report: dict[str, object] = {
        "teacher": teacher.ref,
        "teacher_runtime": "onnx",
        "cpus": os.cpu_count(),
        "requests": args.requests,
    }
    report["overhead_concurrency_1"] = overhead(args.state_dir, teacher.ref, texts, args.requests)
    variants = {
        "batching_on": {"max_batch_size": 32, "max_wait_ms": 0},
        "batching_on_wait_2ms": {"max_batch_size": 32, "max_wait_ms": 2},
        "batching_off": {"max_batch_size": 1, "max_wait_ms": 0},
    }
    for label, batching in variants.items():
        runs: dict[str, object] = {"settings": batching}
        with gateway(args.state_dir, max_in_flight=256, **batching) as url:
            for concurrency in (8, 32):
                result = asyncio.run(load(url, texts, concurrency, args.requests, None))
                result.pop("latencies_ms")
                runs[f"concurrency_{concurrency}"] = result
        report[label] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
