"""E2E fixtures: a real Prometheus server scraping real gateways, plus the integration `serve` fixture.

`prometheus_server(["127.0.0.1:8123"])` starts `prometheus` (deploy/local/prometheus.py: scrape and
evaluation every 1 s) on a free port with its own TSDB under the test's tmp dir, waits for `/-/ready`
and returns its base URL; every server started is stopped (terminate, then kill) after the test.
Without the binary the test is skipped, or fails under CI (`CI` set), where `.ci/run` installs the
Debian `prometheus` package.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.local.processes import MissingBinary, require_binary
from deploy.local.prometheus import PrometheusServer
from distill.classify.build import load_split
from tests.support import TINY_RECIPE


def require_or_skip(error: MissingBinary) -> None:
    """A missing server binary skips the test, or fails it under CI, which installs it."""
    if os.environ.get("CI"):
        pytest.fail(str(error))
    pytest.skip(str(error))


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    started: list[PrometheusServer] = []

    def _start(targets: list[str]) -> str:
        try:
            server = PrometheusServer.start(targets, tmp_path / f"prometheus-{len(started)}")
        except MissingBinary as error:
            require_or_skip(error)
            raise
        started.append(server)
        return server.url

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def topology_binaries() -> None:
    """The servers of deploy/local's topology that come from Debian packages, installed (or skip/fail)."""
    for name in ("prometheus", "haproxy"):
        try:
            require_binary(name, package=name)
        except MissingBinary as error:
            require_or_skip(error)


@pytest.fixture(scope="session")
def tweets() -> list[str]:
    """Real tweets (the tiny build's test split) for client loops."""
    return load_split(TINY_RECIPE).test.texts
