"""Two gateways on one state dir, as replicas on one machine share the local store: a split changed
through one is served by the other (a model it has not loaded yet is answered for by the teacher until
it is), one controller acts (the lease holder), and when its process is killed the other takes the
rollout over from the stored state."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import FAST, STUDENT, TEACHER, start_gateway


def poll(check, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """`check()` once it is truthy; `timeout` bounds a failure only."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)
    return found


def test_replicas_share_the_split_and_hand_the_rollout_over(state_dir: Path) -> None:
    first, first_url = start_gateway(state_dir, rollout_tick_seconds=0.25, shadow_enabled=False)
    second, second_url = start_gateway(state_dir, rollout_tick_seconds=0.25, shadow_enabled=False)
    headers = {"Authorization": f"Bearer {(state_dir / 'admin.token').read_text().strip()}"}
    try:
        half = {TEACHER: 50, STUDENT: 50}
        put = httpx.put(f"{first_url}/admin/traffic/classify", json={"weights": half}, headers=headers)
        assert put.status_code == 200, put.text

        def split_on_second() -> bool:
            traffic = httpx.get(f"{second_url}/admin/traffic", headers=headers).json()["traffic"]
            return traffic["classify"] == half

        poll(split_on_second, "the split changed through the first replica reached the second")
        served = {
            httpx.post(f"{second_url}/classify", json={"text": f"text {i}"}).headers["x-kdgate-model"]
            for i in range(40)
        }
        assert served == {TEACHER, STUDENT}

        # A model registered and loaded by the first replica only, then given the whole split.
        newcomer = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT), name="newcomer").ref
        assert httpx.post(f"{first_url}/admin/models/reload", headers=headers).status_code == 200
        whole = {"weights": {newcomer: 100}}
        assert (
            httpx.put(f"{first_url}/admin/traffic/classify", json=whole, headers=headers).status_code == 200
        )
        answers: list[httpx.Response] = []

        def newcomer_on_second() -> bool:
            answers.append(httpx.post(f"{second_url}/classify", json={"text": "a text"}))
            return answers[-1].headers.get("x-kdgate-model") == newcomer

        poll(newcomer_on_second, "the second replica loaded the newcomer and served it")
        assert {a.status_code for a in answers} == {200}  # the teacher answered until it was loaded

        # A rollout started through the second replica is driven by the first, which took the lease.
        body = {"task": "classify", "baseline": TEACHER, "candidate": STUDENT, **FAST, "min_dwell_s": 600.0}
        started = httpx.post(f"{second_url}/admin/rollouts", json=body, headers=headers)
        assert started.status_code == 201, started.text
        status = httpx.get(f"{second_url}/admin/rollouts/classify", headers=headers).json()
        assert status["controller"]["pid"] == first.pid
        first.kill()
        first.wait(timeout=10)

        def led_by_second() -> dict | None:  # type: ignore[type-arg]
            found = httpx.get(f"{second_url}/admin/rollouts/classify", headers=headers).json()
            return found if (found["controller"] or {}).get("pid") == second.pid else None

        after = poll(led_by_second, "the second replica took the controller lease over")
        assert after["state"]["phase"] == "progressing" and after["state"]["step_index"] == 0
        traffic = httpx.get(f"{second_url}/admin/traffic", headers=headers).json()["traffic"]["classify"]
        assert traffic == {TEACHER: 95, STUDENT: 5}
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait(timeout=10)
