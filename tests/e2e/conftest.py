"""E2E fixtures: a real Prometheus server scraping real gateways, plus the integration `serve` fixture.

`prometheus_server(["127.0.0.1:8123"])` starts `prometheus` (scrape and evaluation every 1 s) on a free
port with its own TSDB under the test's tmp dir, waits for `/-/ready` and returns its base URL; every
server started is stopped (terminate, then kill) after the test. Without the binary the test is skipped,
or fails under CI (`CI` set), where `.ci/run` installs the Debian `prometheus` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from distill.classify.build import load_split
from tests.support import TINY_RECIPE, free_port

SCRAPE_INTERVAL_S = 1.0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "the prometheus binary is not installed (Debian package `prometheus`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    started: list[subprocess.Popen[bytes]] = []

    def _start(targets: list[str]) -> str:
        home = tmp_path / f"prometheus-{len(started)}"
        (home / "data").mkdir(parents=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "kdgate", "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}
            ],
        }
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log_path = home / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={home / 'prometheus.yml'}",
                    f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{_log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus was not ready within 30 s:\n{_log_tail(log_path)}")
            time.sleep(0.1)

    yield _start
    for process in started:
        _stop(process)


@pytest.fixture(scope="session")
def tweets() -> list[str]:
    """Real tweets (the tiny build's test split) for client loops."""
    return load_split(TINY_RECIPE).test.texts
