"""Rollouts judged from a real Prometheus: the standalone driver (`kdgate rollout run`) as a process,
a real gateway (external driver mode) scraped every second, weights applied through the admin API."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.traffic import TrafficLoop
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import FAST, STUDENT, TEACHER


@pytest.fixture
def driver(state_dir: Path) -> Iterator[Any]:
    """Starts `kdgate rollout run` against a gateway and a Prometheus; stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def _start(gateway_url: str, prometheus_url: str) -> subprocess.Popen[bytes]:
        kdgate = str(Path(sys.executable).with_name("kdgate"))
        cmd = [
            kdgate,
            "rollout",
            "run",
            "--prometheus",
            prometheus_url,
            "--gateway",
            gateway_url,
            "--state-dir",
            str(state_dir),
            "--tick",
            "1",
            "--min-window-s",
            "2",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=15)


def run_rollout(
    server: Any, prometheus_server: Any, driver: Any, candidate: str, tweets: list[str], **overrides: Any
) -> tuple[dict[str, Any], TrafficLoop, float]:
    prom = prometheus_server([server.url.removeprefix("http://")])
    driver(server.url, prom)
    body = {"task": "classify", "candidate": candidate, **FAST, **overrides}
    started = time.monotonic()
    r = httpx.post(f"{server.url}/admin/rollouts", json=body, headers=server.admin_headers())
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 600  # bounds a failure only: a promotion took 126 s in CI (2026-12-01)
    with TrafficLoop(server.url, tweets) as loop:
        while time.monotonic() < deadline:
            state = httpx.get(f"{server.url}/admin/rollouts/classify", headers=server.admin_headers()).json()
            if state["state"]["phase"] in ("promoted", "rolled_back", "paused"):
                break
            time.sleep(0.25)
    return state["state"], loop, time.monotonic() - started


def test_good_student_is_promoted_from_prometheus(serve, prometheus_server, driver, tweets) -> None:
    server = serve(rollout_driver="external")
    state, loop, _ = run_rollout(server, prometheus_server, driver, STUDENT, tweets)
    assert state["phase"] == "promoted", state
    assert set(loop.codes) == {200}
    events = httpx.get(f"{server.url}/admin/events", headers=server.admin_headers()).json()["events"]
    assert [e["weights"].get(STUDENT) for e in events] == [5, 25, 50, 100, 100]
    assert all(e["actor"] == "judge" for e in events[1:])


def test_slow_student_is_rolled_back_from_prometheus(
    serve, state_dir, prometheus_server, driver, tweets
) -> None:
    slow = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT, latency_ms=300.0)).ref
    server = serve(rollout_driver="external")
    state, loop, elapsed = run_rollout(server, prometheus_server, driver, slow, tweets, p99_slo_ms=150.0)
    assert state["phase"] == "rolled_back", state
    assert set(loop.codes) == {200}
    last = httpx.get(f"{server.url}/admin/events", headers=server.admin_headers()).json()["events"][-1]
    assert last["to_phase"] == "rolled_back"
    assert "p99_ms" in {e["metric"] for e in last["evidence"] if e["verdict"] == "fail"}
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic["classify"] == {TEACHER: 100}
    print(f"\np99 via Prometheus: fault onset -> candidate weight 0 in {elapsed:.1f} s")
