"""Helpers shared by integration and e2e tests: free ports, keyed traffic, reading /metrics text."""

from __future__ import annotations

import asyncio
import socket

import httpx


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
