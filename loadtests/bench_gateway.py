"""Gateway overhead and throughput on /classify with a real `kdgate serve` subprocess.

    .venv/bin/python -m loadtests.bench_gateway --state-dir .kdgate

1. Overhead at concurrency 1: HTTP p50/p99 minus in-process p50/p99 of the same model (teacher, pinned).
2. Teacher at 100%: latency and throughput at concurrency 8 and 32, micro-batching on (max batch 32,
   max wait 2 ms) vs off (max batch 1).
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

import httpx
import numpy as np

from distill.classify_build import TEACHER_NAME, ClassifyRecipe, load_split
from distill.registry import Registry
from distill.runners import load_runner
from loadtests._server import gateway


def summary(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    return {
        "requests": len(latencies_ms),
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "throughput_rps": len(latencies_ms) / seconds,
    }


async def load(
    url: str, texts: list[str], concurrency: int, requests: int, pin: str | None
) -> dict[str, float]:
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
    return summary(latencies, elapsed)


def in_process(state_dir: Path, ref: str, texts: list[str], requests: int) -> dict[str, float]:
    runner = load_runner(Registry(state_dir), ref, threads=1, prefer_onnx=True)  # as served (teacher_runtime)
    for text in texts[:20]:
        runner.predict_logits([text])
    latencies = []
    started = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        runner.predict_logits([texts[i % len(texts)]])
        latencies.append((time.perf_counter() - t0) * 1000)
    return summary(latencies, time.perf_counter() - started)


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
    direct = in_process(args.state_dir, teacher.ref, texts, args.requests)
    with gateway(args.state_dir, max_wait_ms=0, max_in_flight=256) as url:
        http = asyncio.run(load(url, texts, 1, args.requests, teacher.ref))
    report["overhead_concurrency_1"] = {
        "in_process": direct,
        "http": http,
        "overhead_p50_ms": http["p50_ms"] - direct["p50_ms"],
        "overhead_p99_ms": http["p99_ms"] - direct["p99_ms"],
    }
    for label, batch in (("batching_on", 32), ("batching_off", 1)):
        runs = {}
        with gateway(args.state_dir, max_batch_size=batch, max_wait_ms=2, max_in_flight=256) as url:
            for concurrency in (8, 32):
                runs[f"concurrency_{concurrency}"] = asyncio.run(
                    load(url, texts, concurrency, args.requests, None)
                )
        report[label] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
