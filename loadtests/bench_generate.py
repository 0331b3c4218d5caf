"""/generate through the gateway: tokens/s and time to first token of teacher and student, and the
shadow log's bytes per generated token.

    .venv/bin/python -m loadtests.bench_generate --state-dir .kdgate

For each model (pinned with `x-kdgate-model`) and concurrency 1 and 4: streamed greedy chat requests on
held-out-style prompts; per request the client measures time to first token and decode tokens/s (after
the first token); per run the aggregate tokens/s. Shadow is off for these runs (it would share the
cores). Then the student at 100% with shadow on: bytes per generated token of the Parquet log, whole
and teacher payload only. The engine's thread setting is in the report. Writes
loadtests/results/bench_generate.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

from distill.corpora import bbc_paragraphs
from distill.registry import Registry
from loadtests._server import admin_headers, gateway, scratch_copy
from loadtests.bench_shadow import wait_for_shadow_idle

THREADS = 1  # torch threads per engine (the gateway default); engines run side by side on the 2 cores
PAYLOAD_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_mass")


def prompts(n: int) -> list[list[dict[str, str]]]:
    """Chat prompts from the tail of the BBC paragraphs (the seed prompts come from the head)."""
    paragraphs = [p for p in bbc_paragraphs() if 80 <= len(p) <= 400][-n:]
    kinds = ("Summarize in one sentence: ", "Continue this text: ", "What is this about? ")
    return [[{"role": "user", "content": kinds[i % 3] + p}] for i, p in enumerate(paragraphs)]


async def one(client: httpx.AsyncClient, model: str, messages: Any, max_tokens: int) -> dict[str, float]:
    body = {"messages": messages, "max_tokens": max_tokens, "stream": True}
    started = time.perf_counter()
    first = None
    async with client.stream("POST", "/generate", json=body, headers={"x-kdgate-model": model}) as r:
        r.raise_for_status()
        tokens = 0
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "text" in event and first is None:
                first = time.perf_counter()
            if "usage" in event:
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    ttft = (first or end) - started
    decode = (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else 0.0
    return {"ttft_s": ttft, "tokens": tokens, "decode_tokens_per_s": decode, "seconds": end - started}


async def run(url: str, model: str, batch: list[Any], concurrency: int, max_tokens: int) -> dict[str, Any]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def guarded(messages: Any) -> dict[str, float]:
            async with limit:
                return await one(client, model, messages, max_tokens)

        started = time.perf_counter()
        results = await asyncio.gather(*(guarded(m) for m in batch))
        wall = time.perf_counter() - started
    ttfts = sorted(r["ttft_s"] for r in results)
    return {
        "requests": len(results),
        "completion_tokens": sum(r["tokens"] for r in results),
        "aggregate_tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "decode_tokens_per_s_mean": statistics.fmean(r["decode_tokens_per_s"] for r in results),
        "ttft_p50_s": ttfts[len(ttfts) // 2],
        "ttft_max_s": ttfts[-1],
    }


def log_bytes_per_token(shadow_dir: Path) -> dict[str, float]:
    files = sorted((shadow_dir / "generate").glob("seg-*.parquet"))
    total = payload = tokens = rows = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        total += f.stat().st_size
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                if column.path_in_schema.split(".")[0] in PAYLOAD_COLUMNS:
                    payload += column.total_compressed_size
        ids = pq.read_table(f, columns=["served_ids"]).column("served_ids").to_pylist()
        tokens += sum(len(x or []) for x in ids)
    return {
        "records": rows,
        "generated_tokens": tokens,
        "bytes_per_token": total / max(tokens, 1),
        "teacher_payload_bytes_per_token": payload / max(tokens, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=8, help="requests per model and concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--shadow-requests", type=int, default=24)
    parser.add_argument("--student", help="student ref (default: the latest generate student)")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_generate.json"))
    args = parser.parse_args()
    registry = Registry(args.state_dir)
    teacher = registry.latest("generate-teacher")
    student = registry.get(args.student) if args.student else registry.latest("generate-student")
    if teacher is None or student is None:
        raise SystemExit(f"no generate models in {args.state_dir}; run `kdgate serve` once first")
    batch = prompts(args.requests + args.shadow_requests)
    report: dict[str, Any] = {
        "teacher": teacher.ref,
        "student": student.ref,
        "max_tokens": args.max_tokens,
        "generate_threads": THREADS,
        "runs": {},
    }
    settings: dict[str, object] = {"generate_threads": THREADS, "max_tokens_limit": 512}
    with scratch_copy(args.state_dir) as state, gateway(state, shadow_enabled=False, **settings) as url:
        for model in (teacher.ref, student.ref):
            for concurrency in (1, 4):
                result = asyncio.run(run(url, model, batch[: args.requests], concurrency, args.max_tokens))
                report["runs"][f"{model} c={concurrency}"] = result
                print(model, concurrency, json.dumps(result), flush=True)
    for c in (1, 4):
        t, s = report["runs"][f"{teacher.ref} c={c}"], report["runs"][f"{student.ref} c={c}"]
        for kind in ("decode_tokens_per_s_mean", "aggregate_tokens_per_s"):
            report[f"speedup_{kind}_c{c}"] = s[kind] / max(t[kind], 1e-9)
    with scratch_copy(args.state_dir) as state:
        with gateway(state, shadow_generate_queue_size=1024, **settings) as url:
            httpx.put(
                f"{url}/admin/traffic/generate",
                json={"weights": {student.ref: 100}},
                headers=admin_headers(state),
            ).raise_for_status()
            asyncio.run(run(url, student.ref, batch[args.requests :], 4, args.max_tokens))
            wait_for_shadow_idle(url, timeout=600)
        report["shadow_log"] = log_bytes_per_token(state / "shadow")  # flushed on the graceful stop
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
