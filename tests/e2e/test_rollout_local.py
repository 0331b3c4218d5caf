"""Progressive rollouts end to end on a real gateway with the local (in-process) metric source.

Real uvicorn, real tiny models, real shadow scoring, a bounded client loop; faults come from
fault-injection models wrapping the real student. Thresholds are loosened for the tiny student (it
disagrees with its tiny teacher ~25% of the time). The scenarios step the gateway's own controller on a
fake clock (`step_rollout`): the dwell passes at once, the evidence is what they wait for. One smoke
scenario, the promotion, runs on the wall clock with the gateway's own tick loop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.traffic import TrafficLoop
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from durablefs.shared import SharedDocument
from gateway.serving.traffic import TrafficStore
from tests.support import (
    ENDED,
    FAST,
    STUDENT,
    TEACHER,
    FakeClock,
    rollout_status,
    start_gateway,
    step_rollout,
)


def start(server: Any, candidate: str, **overrides: Any) -> httpx.Response:
    body = {"task": "classify", "candidate": candidate, **FAST, **overrides}
    return httpx.post(f"{server.url}/admin/rollouts", json=body, headers=server.admin_headers())


def wait_for_phase(server: Any, phases: frozenset[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = rollout_status(server, "classify")
        if current["state"]["phase"] in phases or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def events(server: Any) -> list[dict[str, Any]]:
    return httpx.get(f"{server.url}/admin/events", headers=server.admin_headers()).json()["events"]


def test_good_student_is_promoted_step_by_step(serve, tweets) -> None:
    """The wall-clock smoke of the local source: the gateway's own tick loop, dwell and windows."""
    server = serve(rollout_tick_seconds=0.25)
    assert start(server, STUDENT).status_code == 201
    with TrafficLoop(server.url, tweets) as loop:
        final = wait_for_phase(server, ENDED, timeout=600)  # bounds a failure only: the end stops it
    assert final["state"]["phase"] == "promoted", final
    assert set(loop.codes) == {200}
    weights = [e["weights"].get(STUDENT) for e in events(server)]
    assert weights == [5, 25, 50, 100, 100]  # start, three advances, promotion
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic["classify"] == {STUDENT: 100}


@pytest.mark.parametrize(
    ("fault", "guard"),
    [
        ({"wrong_rate": 1.0}, "disagreement"),
        ({"latency_ms": 300.0}, "p99_ms"),
        ({"error_rate": 1.0}, "error_burn"),
    ],
    ids=["wrong-answers", "slow", "raising"],
)
def test_faulty_student_is_rolled_back_by_its_guard(serve, state_dir: Path, tweets, fault, guard) -> None:
    faulty = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT, **fault)).ref
    clock = FakeClock()
    server = serve(clock=clock, drive_rollouts=False)
    assert start(server, faulty, p99_slo_ms=150.0).status_code == 201
    with TrafficLoop(server.url, tweets) as loop:
        final = step_rollout(server, clock, "classify", timeout=300)
    assert final["state"]["phase"] == "rolled_back", final
    failed = [e for e in final["evidence"] if e["verdict"] == "fail"]
    assert guard in {e["metric"] for e in failed}, final["evidence"]
    assert set(loop.codes) == {200}  # fallback: no client ever saw the fault
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic["classify"] == {TEACHER: 100}
    last = events(server)[-1]
    assert last["actor"] == "judge" and last["to_phase"] == "rolled_back" and last["evidence"]


def test_without_traffic_the_rollout_holds(serve) -> None:
    """Every tick judges (evidence, the inconclusive count) and none moves the rollout on no data."""
    clock = FakeClock()
    server = serve(clock=clock, drive_rollouts=False)
    assert start(server, STUDENT, min_dwell_s=30.0).status_code == 201
    ticks = 5
    for _ in range(ticks):
        clock.advance(60.0)  # each tick well past the dwell: only the missing evidence holds it
        server.gateway.controller.tick()
    current = rollout_status(server, "classify")
    assert current["state"]["phase"] == "progressing"
    assert current["state"]["step_index"] == 0 and current["state"]["weight"] == 5
    assert current["state"]["inconclusive"] == ticks  # every tick was judged inconclusive
    assert current["evidence"] and {e["verdict"] for e in current["evidence"]} == {"inconclusive"}
    assert [e["to_phase"] for e in events(server)] == ["progressing"]


def test_bad_operator_input_is_refused_and_nothing_changes(serve) -> None:
    server = serve()
    cases = [
        ({"candidate": "classify-student@9"}, 422, "candidate"),
        ({"candidate": TEACHER}, 422, "candidate"),
        ({"candidate": STUDENT, "steps": [5, 50, 25, 100]}, 422, "steps"),
        ({"candidate": STUDENT, "steps": [5, 25, 50]}, 422, "steps"),
        ({"candidate": STUDENT, "max_disagreement": 1.5}, 422, "max_disagreement"),
        ({"candidate": STUDENT, "colour": "red"}, 422, "colour"),
    ]
    for overrides, code, field in cases:
        body = {"task": "classify", **overrides}
        r = httpx.post(f"{server.url}/admin/rollouts", json=body, headers=server.admin_headers())
        assert r.status_code == code, (overrides, r.text)
        assert r.json()["error"]["field"] == field, (overrides, r.text)
    assert (
        httpx.get(f"{server.url}/admin/rollouts/classify", headers=server.admin_headers()).status_code == 404
    )
    assert start(server, STUDENT).status_code == 201
    second = start(server, STUDENT)
    assert second.status_code == 409
    # A manual split is refused while progressing, allowed with force or once paused.
    split = {"weights": {STUDENT: 50, TEACHER: 50}}
    url = f"{server.url}/admin/traffic/classify"
    assert httpx.put(url, json=split, headers=server.admin_headers()).status_code == 409
    pause = httpx.post(f"{server.url}/admin/rollouts/classify/pause", headers=server.admin_headers())
    assert pause.status_code == 200
    assert httpx.put(url, json=split, headers=server.admin_headers()).status_code == 200
    again = httpx.post(f"{server.url}/admin/rollouts/classify/pause", headers=server.admin_headers())
    assert again.status_code == 409
    abort = httpx.post(
        f"{server.url}/admin/rollouts/classify/abort", json={"reason": "test"}, headers=server.admin_headers()
    )
    assert abort.json()["state"]["phase"] == "rolled_back"
    assert [e["to_phase"] for e in events(server)] == ["progressing", "paused", "rolled_back"]


def test_kill_9_mid_rollout_resumes_the_same_step(state_dir: Path, tweets) -> None:
    """A crash between persisting a step and applying its weights: the restarted gateway re-asserts the
    stored step's weights (resync) and its controller judges on from the same step."""
    proc, url = start_gateway(state_dir, rollout_tick_seconds=0.25)
    token = (state_dir / "admin.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"task": "classify", "candidate": STUDENT, **FAST, "min_dwell_s": 600.0}
    assert httpx.post(f"{url}/admin/rollouts", json=body, headers=headers).status_code == 201
    with TrafficLoop(url, tweets, max_requests=200):
        time.sleep(2.0)
    first = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()
    before = first["state"]
    assert first["controller"]["pid"] == proc.pid  # the gateway's controller holds the lease
    proc.kill()
    proc.wait(timeout=10)
    # The split on disk is the one before the step: as if the process died after saving the step but
    # before applying its weights.
    TrafficStore(SharedDocument(state_dir / "traffic.json")).set("classify", {TEACHER: 100})

    proc, url = start_gateway(state_dir, rollout_tick_seconds=0.25)
    try:
        deadline = time.monotonic() + 60  # bounds a failure only
        while True:
            current = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()
            traffic = httpx.get(f"{url}/admin/traffic", headers=headers).json()["traffic"]["classify"]
            if (current["evidence"] and traffic != {TEACHER: 100}) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    after = current["state"]
    assert current["controller"]["pid"] == proc.pid  # the dead holder's lease was free at once
    assert traffic == {TEACHER: 95, STUDENT: 5}  # re-asserted from the stored step
    assert current["evidence"], "the restarted controller never judged the rollout"
    assert after["phase"] == before["phase"] == "progressing"
    assert after["step_index"] == before["step_index"] == 0
    assert after["step_started_at"] == before["step_started_at"]  # the dwell clock was not reset
