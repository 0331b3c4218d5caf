"""A real uvicorn on 127.0.0.1 (port 0) serving `create_app`, started and stopped per test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import Settings


@dataclass
class RunningServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def token(self) -> str:
        return (self.settings.state_dir / "admin.token").read_text().strip()

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(state_dir: Path, **overrides: Any) -> RunningServer:
    settings = Settings(state_dir=state_dir, **overrides)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = RunningServer(f"http://127.0.0.1:{port}", settings, server, thread)
    while httpx.get(f"{running.url}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("models did not load")
        time.sleep(0.05)
    return running


@pytest.fixture
def serve(state_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    """`serve(**settings)` starts a server on the test's state dir; all are stopped after the test."""
    started: list[RunningServer] = []

    def _start(**overrides: Any) -> RunningServer:
        running = start_server(overrides.pop("state_dir", state_dir), **overrides)
        started.append(running)
        return running

    yield _start
    for running in started:
        running.stop()
