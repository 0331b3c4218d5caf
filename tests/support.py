"""Helpers shared by integration and e2e tests: free ports, keyed traffic, reading /metrics text,
killing a training run mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the exposition lines of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def send_keyed(url: str, n: int, prefix: str, concurrency: int = 4) -> list[httpx.Response]:
    """`n` single-text /classify requests, each with its own routing key `<prefix>-<i>`."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            async with limit:
                body, headers = {"text": f"{prefix} number {i} is great"}, {"x-kdgate-key": f"{prefix}-{i}"}
                return await client.post("/classify", json=body, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(n)))


def kill_at_first_checkpoint(script: str, state_dir: Path) -> float:
    """Runs `script` (a re-distillation) in a child process, kill -9s it as soon as its first checkpoint
    is on disk, and returns the window end the run pinned before training."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    checkpoints = state_dir / "distill" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("*.pt")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    (until,) = json.loads((state_dir / "distill" / "inflight.json").read_text()).values()
    return float(until)


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after "(comm)" (which may hold spaces): [state, ppid, …]; OSError once it is gone."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            if int(_stat_fields(entry.name)[1]) == pid:
                children.append(int(entry.name))
    return children


def is_alive(pid: int) -> bool:
    """Running, not exited (an exited child nobody has reaped yet is a zombie: state Z)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False
