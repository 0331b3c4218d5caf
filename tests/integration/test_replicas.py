"""Two gateways on one state store, as replicas share it: the local files of one state dir (replicas on
one machine) or a PostgreSQL database (replicas anywhere). A split changed through one is served by the
other (a model it has not loaded yet is answered for by the teacher until it is), a reload asked of one
is done by both (word of it goes through the store), one controller acts
(the lease holder), a re-distillation's hold on the shadow log taken through one is kept by both, and
when its process is killed the other takes the rollout over from the stored
state. On PostgreSQL, a gateway whose database goes away keeps serving its last split and refuses
changes until the database is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.postgres import PostgresServer
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from gateway.continual.watch import AdminHost
from rollout.admin_client import AdminClient
from tests.support import FAST, STUDENT, TEACHER, metric_sum, poll, start_gateway


def metric(url: str, name: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return float(next(line.split()[-1] for line in lines if line.startswith(f"{name} ")))


@pytest.mark.parametrize("backend", ["local", "postgresql"])
def test_replicas_share_the_split_and_hand_the_rollout_over(
    backend: str, state_dir: Path, request: pytest.FixtureRequest
) -> None:
    store = {} if backend == "local" else {"store": request.getfixturevalue("postgres_db_url")}
    third = None
    first, first_url = start_gateway(state_dir, rollout_tick_seconds=0.25, shadow_enabled=False, **store)
    second, second_url = start_gateway(state_dir, rollout_tick_seconds=0.25, shadow_enabled=False, **store)
    headers = {"Authorization": f"Bearer {(state_dir / 'admin.token').read_text().strip()}"}
    try:
        half = {TEACHER: 50, STUDENT: 50}
        put = httpx.put(f"{first_url}/admin/traffic/classify", json={"weights": half}, headers=headers)
        assert put.status_code == 200, put.text

        def split_on_second() -> bool:
            traffic = httpx.get(f"{second_url}/admin/traffic", headers=headers).json()["traffic"]
            return traffic["classify"] == half

        poll(split_on_second, "the split changed through the first replica reached the second")
        # Where it went: the files of the state dir, or the database and nothing on disk.
        assert (state_dir / "traffic.json").exists() is (backend == "local")
        assert metric(second_url, "kdgate_store_up") == 1.0
        served = {
            httpx.post(f"{second_url}/classify", json={"text": f"text {i}"}).headers["x-kdgate-model"]
            for i in range(40)
        }
        assert served == {TEACHER, STUDENT}

        # A run of `kdgate distill watch` holds the shadow log through the first replica: the second,
        # whose retention deletes segments of the same log, keeps them too; released, it lets them go.
        admin = AdminClient(first_url, headers["Authorization"].removeprefix("Bearer "))
        watch = AdminHost(admin)
        asyncio.run(watch.protect_shadow_after(1_700_000_000.0))

        def holds_on_second() -> dict[str, Any]:
            return dict(httpx.get(f"{second_url}/admin/shadow", headers=headers).json()["holds"])

        held = poll(holds_on_second, "the hold taken through the first replica reached the second")
        assert [h["since"] for h in held.values()] == [1_700_000_000.0], held
        asyncio.run(watch.protect_shadow_after(None))
        admin.close()
        poll(lambda: not holds_on_second(), "the released hold left the second replica")

        # A model registered, and a reload asked of the first replica only: the word goes through the
        # store, and the second loads it too, before any split names it.
        newcomer = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT), name="newcomer").ref
        assert httpx.post(f"{first_url}/admin/models/reload", headers=headers).status_code == 200

        def loaded_on_second() -> bool:
            models = httpx.get(f"{second_url}/admin/models", headers=headers).json()["models"]
            return any(m["ref"] == newcomer and m["loaded"] for m in models)

        poll(loaded_on_second, "the second replica loaded the model a reload of the first announced", 10)

        # Then given the whole split: served by both.
        whole = {"weights": {newcomer: 100}}
        assert (
            httpx.put(f"{first_url}/admin/traffic/classify", json=whole, headers=headers).status_code == 200
        )
        answers: list[httpx.Response] = []

        def newcomer_on_second() -> bool:
            answers.append(httpx.post(f"{second_url}/classify", json={"text": "a text"}))
            return answers[-1].headers.get("x-kdgate-model") == newcomer

        poll(newcomer_on_second, "the second replica served the newcomer")
        assert {a.status_code for a in answers} == {200}

        # Named by an admin write to a replica that has not loaded it, with no reload asked (behind a
        # balancer, the write may reach any replica): that replica loads the registered models first,
        # then takes the write.
        another = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT), name="another").ref
        put = httpx.put(
            f"{second_url}/admin/traffic/classify", json={"weights": {another: 100}}, headers=headers
        )
        assert put.status_code == 200, put.text
        # The first replica, told nothing, meets the model in the split: the teacher answers for it
        # while it loads in the background.
        answers.clear()

        def another_on_first() -> bool:
            answers.append(httpx.post(f"{first_url}/classify", json={"text": "a text"}))
            return answers[-1].headers.get("x-kdgate-model") == another

        poll(another_on_first, "the first replica loaded the model the split named and served it")
        assert {a.status_code for a in answers} == {200}

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
        events = httpx.get(f"{second_url}/admin/events?task=classify", headers=headers).json()["events"]
        assert [e["to_phase"] for e in events] == ["progressing"]  # the start, once: none lost or repeated

        # A replica started mid-rollout serves the canary's split from its first request.
        third, third_url = start_gateway(state_dir, rollout_tick_seconds=0.25, shadow_enabled=False, **store)
        with httpx.Client(base_url=third_url) as client:
            served = [client.post("/classify", json={"text": f"text {i}"}) for i in range(200)]
        assert {r.status_code for r in served} == {200}
        # 5% of 200 requests: all missing the student has odds 0.95^200 ≈ 4e-5
        assert {r.headers["x-kdgate-model"] for r in served} == {TEACHER, STUDENT}
        assert metric_sum(httpx.get(f"{third_url}/metrics").text, "kdgate_requests_total", model=STUDENT) < 40
    finally:
        for proc in (first, second, third):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def private_server() -> Iterator[PostgresServer]:
    """A database server of the test's own, to stop and start under a gateway."""
    with PostgresServer.start() as server:
        yield server


def test_a_gateway_serves_its_last_split_while_the_database_is_away(
    state_dir: Path, private_server: PostgresServer
) -> None:
    url = private_server.create_database("kdgate")
    proc, gateway = start_gateway(state_dir, store=url, rollout_tick_seconds=0.25, shadow_enabled=False)
    headers = {"Authorization": f"Bearer {(state_dir / 'admin.token').read_text().strip()}"}
    try:
        half = {"weights": {TEACHER: 50, STUDENT: 50}}
        assert httpx.put(f"{gateway}/admin/traffic/classify", json=half, headers=headers).status_code == 200
        body = {"task": "classify", "baseline": TEACHER, "candidate": STUDENT, **FAST, "min_dwell_s": 600.0}
        started = httpx.post(f"{gateway}/admin/rollouts", json=body, headers=headers)
        assert started.status_code == 201, started.text

        private_server.stop("fast")
        poll(lambda: metric(gateway, "kdgate_store_up") == 0.0, "kdgate_store_up fell to 0")
        # The canary's first step, as last stored: 5% of 200 requests reach the student (all 200 missing
        # it has odds 0.95^200 ≈ 4e-5; at 40 it was 13%, and a run saw it).
        with httpx.Client(base_url=gateway) as client:
            served = {
                client.post("/classify", json={"text": f"text {i}"}).headers["x-kdgate-model"]
                for i in range(200)
            }
        assert served == {TEACHER, STUDENT}
        refused = httpx.put(f"{gateway}/admin/traffic/classify", json=half, headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "store_unavailable"
        assert "postgres@" not in refused.text  # the store is named, its credentials never
        assert httpx.post(f"{gateway}/admin/rollouts/classify/pause", headers=headers).status_code == 503

        private_server.restart()
        poll(lambda: metric(gateway, "kdgate_store_up") == 1.0, "kdgate_store_up back to 1")
        pause = f"{gateway}/admin/rollouts/classify/pause"
        poll(lambda: httpx.post(pause, headers=headers).status_code == 200, "a change is taken again")
        status = httpx.get(f"{gateway}/admin/rollouts/classify", headers=headers).json()
        assert status["state"]["phase"] == "paused"

        def leading() -> bool:  # the lease went with the old connection: taken again on the next tick
            status = httpx.get(f"{gateway}/admin/rollouts/classify", headers=headers).json()
            return (status["controller"] or {}).get("pid") == proc.pid

        poll(leading, "the gateway holds the controller lease again")
    finally:
        proc.kill()
        proc.wait(timeout=10)
