"""Gateway overhead and throughput on /classify with a real `kdgate serve` subprocess.

    .venv/bin/python -m loadtests.bench_gateway --state-dir .kdgate

1. Overhead at concurrency 1: HTTP p50/p99 minus in-process p50/p99 of the same model (teacher, pinned).
   In the same rounds, the control: the plainest FastAPI wrapper around the same model on one worker
   thread (`loadtests/plain_wrapper.py`), so what kdgate adds is told apart from what any HTTP wrapper
   adds here; the floor control, no framework at all (`loadtests/raw_wrapper.py`: an asyncio protocol
   on a bare socket, the same model on one worker thread); and the HTTP floor (GET /healthz: client,
   loopback, uvicorn, no model). Rounds alternate while the servers are up, so drift of the machine hits
   all alike. The `server-timing` header splits kdgate's time into model, batch queue, handler and
   everything outside the handler. The client is a raw keep-alive HTTP/1.1 connection (`LeanClient`);
   the same overhead through httpx is reported too.
2. Teacher at 100%: latency and throughput at concurrency 8 and 32, micro-batching on (max batch 32)
   without waiting (work-conserving, the default) and with a 2 ms wait, vs off (max batch 1).
Writes loadtests/results/bench_gateway.json. Client and server share the 2 cores: figures include that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from distill.classify.build import TEACHER_NAME, load_split
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import Runner, load_runner
from distill.registry import Registry
from loadtests._server import control, gateway


def summary(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    """Latency percentiles and throughput (requests over the wall time they took)."""
    return {
        "requests": len(latencies_ms),
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "throughput_rps": len(latencies_ms) / seconds,
    }


def server_timing(header: str) -> dict[str, float]:
    """`queue;dur=0.1, model;dur=6.5, …` → {"queue": 0.1, "model": 6.5, …} (entries with a duration)."""
    out = {}
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            if param.startswith("dur="):
                out[name] = float(param[4:])
    return out


async def load(
    url: str, texts: list[str], concurrency: int, requests: int, pin: str | None
) -> dict[str, Any]:
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
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
                timings.append(server_timing(r.headers.get("server-timing", "")))

        for text in texts[:20]:  # warm-up
            await client.post("/classify", json={"text": text}, headers=headers)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {**summary(latencies, elapsed), "latencies_ms": latencies, "timings": timings}


def in_process(runner: Runner, texts: list[str], requests: int) -> list[float]:
    latencies = []
    for i in range(requests):
        t0 = time.perf_counter()
        runner.predict_logits([texts[i % len(texts)]])
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


class LeanClient:
    """One keep-alive HTTP/1.1 connection, requests written in one send, just enough parsing to read a
    response: the client for the concurrency-1 overhead, because the client library's own cost is not
    the gateway's (httpx's AsyncClient added ~3 ms per request on this machine, more than kdgate).

    >>> with LeanClient(url) as client:
    ...     status, headers, body = client.request("POST", "/classify", b'{"text": "hi"}')
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> LeanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}", f"content-length: {len(body)}"]
        lines += ["content-type: application/json"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        got = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        length = int(got.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self._recv()
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), got, content

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk


def sequential(
    url: str, texts: list[str], requests: int, pin: str | None
) -> tuple[list[float], list[dict[str, float]]]:
    """Concurrency 1 through `LeanClient`: latencies (ms) and the server-timing of each response."""
    headers = {"x-kdgate-model": pin} if pin else {}
    latencies, timings = [], []
    with LeanClient(url) as client:
        for i in range(requests):
            body = json.dumps({"text": texts[i % len(texts)]}).encode()
            started = time.perf_counter()
            status, got, _ = client.request("POST", "/classify", body, headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"POST /classify answered {status}")
            timings.append(server_timing(got.get("server-timing", "")))
    return latencies, timings


def lean_load(url: str, texts: list[str], concurrency: int, requests: int) -> dict[str, Any]:
    """`concurrency` threads, each with its own `LeanClient`, share `requests` POST /classify: a load
    that leaves the 2 cores to the gateway (httpx's async client took about one of them at c=8)."""
    latencies: list[float] = []
    counter = iter(range(requests))  # next() on a range iterator is atomic under the GIL

    def worker() -> None:
        with LeanClient(url) as client:
            for i in counter:
                body = json.dumps({"text": texts[i % len(texts)]}).encode()
                started = time.perf_counter()
                status, _, _ = client.request("POST", "/classify", body)
                if status != 200:
                    raise RuntimeError(f"POST /classify answered {status}")
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for done in [pool.submit(worker) for _ in range(concurrency)]:
            done.result()
    return {**summary(latencies, time.perf_counter() - started), "latencies_ms": latencies}


def http_floor(url: str, requests: int) -> list[float]:
    latencies = []
    with LeanClient(url) as client:
        for _ in range(requests):
            started = time.perf_counter()
            status, _, _ = client.request("GET", "/healthz")
            if status != 200:
                raise RuntimeError(f"GET /healthz answered {status}")
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def overhead(
    state_dir: Path, ref: str, texts: list[str], requests: int, rounds: int = 4
) -> dict[str, object]:
    runner = load_runner(Registry(state_dir), ref, threads=1, prefer_onnx=True)  # as served (teacher_runtime)
    in_process(runner, texts[:20], 20)  # warm-up
    series: dict[str, list[float]] = {k: [] for k in ("in_process", "http", "plain", "raw", "floor", "httpx")}
    timings: list[dict[str, float]] = []
    with (
        gateway(state_dir, max_in_flight=256) as url,
        control("loadtests.plain_wrapper", state_dir, ref) as plain_url,
        control("loadtests.raw_wrapper", state_dir, ref) as raw_url,
    ):
        sequential(url, texts, 20, ref)  # warm-up
        sequential(plain_url, texts, 20, None)
        sequential(raw_url, texts, 20, None)
        per_round = max(requests // rounds, 1)
        for r in range(rounds):
            chunk = texts[(r * per_round) % len(texts) :] + texts
            series["in_process"] += in_process(runner, chunk, per_round)
            latencies, got = sequential(url, chunk, per_round, ref)
            series["http"] += latencies
            timings += got
            series["plain"] += sequential(plain_url, chunk, per_round, None)[0]
            series["raw"] += sequential(raw_url, chunk, per_round, None)[0]
            series["floor"] += http_floor(url, per_round // 4)
            series["httpx"] += asyncio.run(load(url, chunk, 1, per_round // 4, ref))["latencies_ms"]
    d, h, p, w = (summary(series[k], sum(series[k]) / 1000) for k in ("in_process", "http", "plain", "raw"))
    x = summary(series["httpx"], sum(series["httpx"]) / 1000)
    return {
        "client": "LeanClient (one keep-alive connection, raw HTTP/1.1)",
        "in_process": d,
        "http": h,
        "plain_fastapi_wrapper": p,
        "raw_asyncio_floor": w,
        "http_floor_healthz": summary(series["floor"], sum(series["floor"]) / 1000),
        "overhead_p50_ms": h["p50_ms"] - d["p50_ms"],
        "overhead_p99_ms": h["p99_ms"] - d["p99_ms"],
        "plain_wrapper_overhead_p50_ms": p["p50_ms"] - d["p50_ms"],
        "plain_wrapper_overhead_p99_ms": p["p99_ms"] - d["p99_ms"],
        "raw_floor_overhead_p50_ms": w["p50_ms"] - d["p50_ms"],
        "raw_floor_overhead_p99_ms": w["p99_ms"] - d["p99_ms"],
        "kdgate_over_plain_wrapper_p50_ms": h["p50_ms"] - p["p50_ms"],
        "kdgate_over_plain_wrapper_p99_ms": h["p99_ms"] - p["p99_ms"],
        "breakdown_p50_ms": breakdown(series["http"], timings),
        "with_httpx_async_client": {**x, "overhead_p50_ms": x["p50_ms"] - d["p50_ms"]},
    }


def breakdown(http: list[float], timings: list[dict[str, float]]) -> dict[str, float]:
    """Medians of where one request's time went, from the server-timing header: the model call on its
    thread, the batch queue, the handler's own work and thread hops (handler − model − queue), and
    everything outside the handler (client, loopback, uvicorn, FastAPI parsing the request and sending
    the response; the handler serialises its body itself)."""
    model = [t["model"] for t in timings]
    queue = [t["queue"] for t in timings]
    gateway = [t["handler"] - t["model"] - t["queue"] for t in timings]
    outside = [total - t["handler"] for total, t in zip(http, timings, strict=True)]
    return {
        "model_on_server": statistics.median(model),
        "queue": statistics.median(queue),
        "handler_minus_model_and_queue": statistics.median(gateway),
        "outside_handler": statistics.median(outside),
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
                result.pop("timings")
                runs[f"concurrency_{concurrency}"] = result
        report[label] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
