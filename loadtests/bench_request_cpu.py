"""CPU per /classify request of kdgate's app against the plain FastAPI wrapper of the same student file,
in-process over ASGI: no sockets, no HTTP parsing, no client. What is left is the framework's and the
gateway's own work around the model: on a 2-core machine shared with the client, one of the things
that separates them in `bench_workers` (issue #20, section 5). What it cannot show is time a thread
spends waiting on another (a model idle between batches): for that, read each server thread's CPU and
context switches (/proc/<pid>/task/*) under `bench_workers`' load.

    .venv/bin/python -m loadtests.bench_request_cpu --state-dir /tmp/tiny --rounds 4 --noop-model
    .venv/bin/python -m loadtests.bench_request_cpu --state-dir /tmp/tiny --profile /tmp/kdgate.prof

Each measurement runs in a fresh process (`--one kdgate|plain`), the two apps alternating round by
round, so drift of the machine hits both alike. The process drives the app's lifespan, puts the split
at 100% on the student (kdgate, shadow off: what `bench_workers` compares), warms up, then sends
`--requests` POST /classify at concurrency 1 and 8 (asyncio tasks) and reports CPU µs per request
(`time.process_time`, the model's thread included). `--noop-model` swaps the classifier runners'
model call for zeros in that process, so the figures are the gateway's cost alone. `--profile PATH`
writes a cProfile of kdgate at concurrency 8 (read it with `python -m pstats PATH`).
Writes loadtests/results/bench_request_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp as App
from starlette.types import Message

RESULTS = Path(__file__).parent / "results"
STUDENT = "classify-student@1"
CONCURRENCY = (1, 8)


async def call(
    app: App, method: str, path: str, body: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Message:
    """One HTTP request through the ASGI app; its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    out: Message = {"body": b""}

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client never hangs up
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out


async def started(app: App) -> Callable[[], Awaitable[None]]:
    """Runs the app's lifespan startup; returns what shuts it down."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    up, down = asyncio.Event(), asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"].startswith("lifespan.startup."):
            up.set()
        if message["type"].startswith("lifespan.shutdown."):
            down.set()

    inbox.put_nowait({"type": "lifespan.startup"})
    task = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    )
    await up.wait()

    async def stop() -> None:
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await down.wait()
        await task

    return stop


def noop_model() -> None:
    """Every classifier runner in this process answers zeros at once: the model's cost leaves the figures."""
    import numpy as np

    from distill.classify import runner

    def zeros(self: Any, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), len(self.manifest.labels)), dtype=np.float32)

    runner.OnnxClassifierRunner.predict_logits = zeros  # type: ignore[method-assign]
    runner.TorchClassifierRunner.predict_logits = zeros  # type: ignore[method-assign]


async def measure(which: str, state_dir: Path, requests: int, profile: Path | None) -> dict[str, float]:
    if which == "kdgate":
        from gateway.app import create_app
        from gateway.settings import Settings

        app = create_app(Settings(state_dir=state_dir, build_missing_models=False, shadow_enabled=False))
    else:
        from loadtests.plain_wrapper import create_app as plain_app

        app = plain_app(state_dir, STUDENT)
    stop = await started(app)
    if which == "kdgate":
        while not app.state.gw.ready:
            if app.state.gw.load_error is not None:
                raise RuntimeError(f"the models did not load: {app.state.gw.load_error}")
            await asyncio.sleep(0.05)
        token = (state_dir / "admin.token").read_text().strip()
        split = json.dumps({"weights": {STUDENT: 100}}).encode()
        auth = ((b"authorization", f"Bearer {token}".encode()),)
        answer = await call(app, "PUT", "/admin/traffic/classify", split, auth)
        assert answer["status"] == 200, answer
    from distill.classify.build import load_split
    from distill.classify.recipe import ClassifyRecipe

    bodies = [json.dumps({"text": text}).encode() for text in load_split(ClassifyRecipe()).test.texts[:200]]
    for body in bodies:  # warm-up, and every answer must be a 200
        answer = await call(app, "POST", "/classify", body)
        assert answer["status"] == 200, answer
    out = {}
    for concurrency in CONCURRENCY:
        profiler = cProfile.Profile() if profile is not None and concurrency == CONCURRENCY[-1] else None

        async def client(counter: Iterator[int]) -> None:
            for i in counter:  # a refusal would make the figures those of an error path
                answer = await call(app, "POST", "/classify", bodies[i % len(bodies)])
                assert answer["status"] == 200, answer

        cpu = time.process_time()
        if profiler is not None:
            profiler.enable()
        shared = iter(range(requests))  # the clients take turns drawing from one count
        await asyncio.gather(*(client(shared) for _ in range(concurrency)))
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        out[f"c{concurrency}_cpu_us"] = (time.process_time() - cpu) / requests * 1e6
    await stop()
    return out


def one(args: argparse.Namespace) -> None:
    import uvloop

    if args.noop_model:
        noop_model()
    profile = args.profile if args.one == "kdgate" else None
    print(json.dumps(uvloop.run(measure(args.one, args.state_dir, args.requests, profile))))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".kdgate"), help="holds the student (and teacher)"
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests per concurrency per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--noop-model", action="store_true", help="zeros instead of the model: the gateway alone"
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile of kdgate at concurrency 8 here")
    parser.add_argument("--one", choices=("kdgate", "plain"), help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one is not None:
        one(args)
        return
    from loadtests._server import scratch_copy

    rounds: dict[str, list[dict[str, float]]] = {"kdgate": [], "plain": []}
    with scratch_copy(args.state_dir) as state:  # the admin write stays out of the given state dir
        for _ in range(args.rounds):
            for which in rounds:
                command = [sys.executable, "-m", "loadtests.bench_request_cpu", "--one", which]
                command += ["--state-dir", str(state), "--requests", str(args.requests)]
                command += ["--noop-model"] * args.noop_model + ["--profile", str(args.profile)] * bool(
                    args.profile
                )
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rounds[which].append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {w: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for w, runs in rounds.items()}
    report = {
        "cpu_us_per_request": medians,
        "ratios": {
            f"kdgate_over_plain_{key}": medians["kdgate"][key] / medians["plain"][key]
            for key in medians["kdgate"]
        },
        "rounds": rounds,
        "setup": {"state_dir": str(args.state_dir), "requests": args.requests, "noop_model": args.noop_model},
    }
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    name = "bench_request_cpu_noop.json" if args.noop_model else "bench_request_cpu.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
