"""Re-distillation at 10k shadow records on 2 cores: the four figures of issue 7.

    .venv/bin/python -m loadtests.bench_redistill --state-dir .kdgate

On a scratch copy of a state dir with the default /classify models:
1. the shadow log gets 10k BBC paragraphs (a domain the tweet student never saw) with the teacher's
   logits, written by the real writer (as if the student had served them with shadow at 100%);
2. trigger → registered on an idle machine: the training child (`kdgate distill --from-shadow`) with
   both cores (2 threads), nothing served;
3. a gateway serves /classify with the student at 100% (shadow off, so only training competes), and
   the client measures p99 at concurrency 8 while idle;
4. the loop's training child as the loop starts it (1 thread, nice 10; SCHED_IDLE with
   `--idle-class`) runs while the same load continues: its wall time is "trigger → registered
   under load", and the p99 during it is the served cost;
5. the gate's figures: agreement and KL with the teacher on the newest 20% of the window (never
   trained on) and seed test-split accuracy, parent vs candidate.
Writes loadtests/results/bench_redistill.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from distill.classify.build import STUDENT_NAME, TEACHER_NAME, load_split
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import load_runner
from distill.corpora import bbc_paragraphs
from distill.registry import Registry
from distill.shadowlog.writer import ShadowLogWriter
from gateway.continual.child import below_serving, redistill_command
from loadtests._server import admin_headers, gateway, scratch_copy

CONCURRENCY = 8


def write_shadow(state: Path, texts: list[str], teacher_ref: str, student_ref: str) -> None:
    teacher = load_runner(Registry(state), teacher_ref, threads=2, prefer_onnx=True)
    logits = teacher.predict_logits(texts)  # (N, C)
    start = time.time() - len(texts) * 0.01
    with ShadowLogWriter(str(state / "shadow"), "classify", flush_rows=2000) as writer:
        for i, (text, row) in enumerate(zip(texts, logits, strict=True)):
            writer.append(
                {
                    "request_id": f"bench-{i}",
                    "ts": start + i * 0.01,
                    "served_model": student_ref,
                    "teacher_model": teacher_ref,
                    "input_text": text,
                    "served_label": "neutral",
                    "served_probs": [1 / 3] * 3,
                    "teacher_logits": row.tolist(),
                    "latency_ms": 1.0,
                }
            )


QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def child_command(state: Path, parent: str, threads: int, result_json: Path) -> list[str]:
    """One run as the loop starts it (the window: the whole log; `until` now)."""
    return [*redistill_command(state, None, time.time(), parent, threads), "--result-json", str(result_json)]


async def load_until(url: str, texts: list[str], done: Any, min_requests: int) -> list[float]:
    """Latencies (ms) of /classify at concurrency 8 until `done()` and at least `min_requests`."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker(offset: int) -> None:
            i = offset
            while len(latencies) < min_requests or not done():
                started = time.perf_counter()
                r = await client.post("/classify", json={"text": texts[i % len(texts)]})
                r.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                i += CONCURRENCY

        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    return latencies


def percentiles(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_redistill.json"))
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument(
        "--idle-class", action=argparse.BooleanOptionalAction, default=False, help="SCHED_IDLE under load"
    )
    args = parser.parse_args()
    registry = Registry(args.state_dir)
    teacher, student = registry.latest(TEACHER_NAME), registry.get(f"{STUDENT_NAME}@1")
    if teacher is None:
        raise SystemExit(f"no default models in {args.state_dir}; run `kdgate serve` once first")
    paragraphs = bbc_paragraphs(limit=args.records, seed=11)
    tweets = load_split(ClassifyRecipe()).test.texts[:2000]
    report: dict[str, Any] = {
        "records": len(paragraphs),
        "concurrency": CONCURRENCY,
        "under_load": {"threads": 1, "nice": args.nice, "sched_idle": args.idle_class},
    }
    with scratch_copy(args.state_dir) as state:
        write_shadow(state, paragraphs, teacher.ref, student.ref)
        started = time.monotonic()
        child = subprocess.Popen(child_command(state, student.ref, 2, Path(os.devnull)), **QUIET)
        child.wait()
        report["trigger_to_registered_idle_2_threads_s"] = round(time.monotonic() - started, 1)
        with gateway(state, shadow_enabled=False) as url:
            split = {"weights": {student.ref: 100}}
            httpx.put(
                f"{url}/admin/traffic/classify", json=split, headers=admin_headers(state)
            ).raise_for_status()
            report["serving_idle"] = percentiles(asyncio.run(load_until(url, tweets, lambda: True, 3000)))
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "result.json"
                lower = below_serving(args.nice, args.idle_class)
                started = time.monotonic()
                child = subprocess.Popen(child_command(state, student.ref, 1, out), preexec_fn=lower, **QUIET)
                during = asyncio.run(load_until(url, tweets, lambda: child.poll() is not None, 100))
                report["trigger_to_registered_under_load_s"] = round(time.monotonic() - started, 1)
                report["serving_during_training"] = percentiles(during)
                result = json.loads(out.read_text())
    gate = result["gate"]
    report["registered"] = result["registered"]
    report["gate_passed"] = gate["passed"]
    report["gate_reasons"] = gate["reasons"]
    report["window_counts"] = result["data"]["counts"]
    before, after = gate["parent"], gate["candidate"]
    report["shifted_domain_agreement"] = {
        "before": before["recent_agreement"],
        "after": after["recent_agreement"],
    }
    report["shifted_domain_kl"] = {"before": before["recent_kl"], "after": after["recent_kl"]}
    report["seed_test_accuracy"] = {"before": before["seed_accuracy"], "after": after["seed_accuracy"]}
    report["p99_increase_during_training_pct"] = 100.0 * (
        report["serving_during_training"]["p99_ms"] / report["serving_idle"]["p99_ms"] - 1.0
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
