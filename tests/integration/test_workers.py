"""`kdgate serve --workers 2`: two gateway processes on one port (SO_REUSEPORT) under a supervisor.

Both answer on the port; one is the rollout controller (the lease holder, shown by
`GET /admin/rollouts/{task}`) and one runs the shadow teacher; the judge's local source counts what both
served, once; and when the holder is killed with -9 the other goes on serving, takes the lease over,
and the supervisor starts a replacement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import FAST, STUDENT, TEACHER, child_pids, is_alive, metric_sum, poll, start_gateway

TEACHER_PROCESS = "gateway.shadow.teacher_process"


def admin(state_dir: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {(state_dir / 'admin.token').read_text().strip()}"}


def answering(url: str, headers: dict[str, str], tries: int = 40) -> set[int]:
    """The pids of the workers that answered `tries` requests, each on a connection of its own (the
    kernel spreads connections, not requests, over the workers' sockets)."""
    return {httpx.get(f"{url}/admin/process", headers=headers).json()["pid"] for _ in range(tries)}


def workers_of(supervisor: subprocess.Popen[bytes], url: str, headers: dict[str, str]) -> set[int]:
    """The supervisor's two workers, once both answer on the port."""
    return poll(
        lambda: found if len(found := answering(url, headers)) == 2 else None, "both workers answer", 60
    )


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_rollout(url: str, headers: dict[str, str]) -> None:
    # A long first step at 50%: the step (and the window the judge reads) stays put during the test.
    # Its verdicts are not what the test is about: a generous latency SLO keeps one slow first request
    # (a cold worker, a busy CI machine) from rolling it back, which would end the publishing.
    body = {"task": "classify", "baseline": TEACHER, "candidate": STUDENT, **FAST}
    body |= {"steps": [50, 100], "min_dwell_s": 600.0, "p99_slo_ms": 60_000.0}
    started = httpx.post(f"{url}/admin/rollouts", json=body, headers=headers)
    assert started.status_code == 201, started.text


def teachers_of(workers: set[int]) -> list[int]:
    """The shadow teacher processes the workers started."""
    return [p for w in workers for p in child_pids(w) if TEACHER_PROCESS in cmdline(p) and is_alive(p)]


def test_two_workers_on_one_port_and_one_killed_with_9(state_dir: Path) -> None:
    """One scenario (each start of two workers costs ~15 s of imports and loading on the CI's cores)."""
    supervisor, url = start_gateway(state_dir, workers=2, rollout_tick_seconds=0.25)
    headers = admin(state_dir)
    try:
        # Both answer on the port, and they are the supervisor's two children.
        workers = workers_of(supervisor, url, headers)
        assert workers == set(child_pids(supervisor.pid))
        # One shadow teacher on the machine, not one per worker.
        assert len(teachers_of(workers)) == 1, teachers_of(workers)

        # One controller: the lease holder that the status names, and the only worker that leads.
        start_rollout(url, headers)
        holder = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()["controller"]["pid"]
        assert holder in workers

        def processes() -> dict[int, dict] | None:  # type: ignore[type-arg]
            seen = [httpx.get(f"{url}/admin/process", headers=headers).json() for _ in range(30)]
            by_pid = {p["pid"]: p for p in seen}
            return by_pid if set(by_pid) == workers else None

        seen = poll(processes, "both workers answer /admin/process")
        assert [pid for pid, p in seen.items() if p["controller"]] == [holder]
        assert len([pid for pid, p in seen.items() if p["shadow"]]) == 1

        # The judge counts both workers' traffic: n requests pinned to the candidate, each on a
        # connection of its own, are all in the observation any worker computes, and once.
        n = 60
        for i in range(n):
            pinned = {"x-kdgate-model": STUDENT}
            r = httpx.post(f"{url}/classify", json={"text": f"text {i}"}, headers=pinned)
            assert r.status_code == 200, r.text

        def observed() -> float:
            found = httpx.get(f"{url}/admin/rollouts/classify/observation", headers=headers).json()
            return float(found["observation"]["requests"])

        seen_counts: list[float] = []

        def all_counted() -> bool:
            seen_counts.append(observed())
            return seen_counts[-1] == n

        try:  # bounds a failure only; each worker publishes every second
            poll(all_counted, f"the observation counts all {n} requests", 30)
        except AssertionError as failed:
            published = (state_dir / "windows.json").read_text()
            phase = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()["state"]["phase"]
            raise AssertionError(
                f"{failed}; last counts {seen_counts[-5:]}; rollout {phase}; published {published}"
            ) from None

        def shares() -> list[float] | None:  # what each worker published (its own lags by a second)
            published = json.loads((state_dir / "windows.json").read_text()).values()
            found = [e["rollouts"]["classify"]["models"][STUDENT]["requests"] for e in published]
            return found if sum(found) == n else None

        assert min(poll(shares, "both workers published their share", 10)) > 0  # both served some
        # /metrics on either worker (a connection each) reports both workers' requests, once.
        scraped = {
            metric_sum(httpx.get(f"{url}/metrics").text, "kdgate_requests_total", model=STUDENT)
            for _ in range(10)
        }
        assert scraped == {n}, scraped
        time.sleep(1.5)  # more publishes: still counted once
        assert {observed() for _ in range(10)} == {n}

        # kill -9 of the lease holder: the other serves on, takes the lease over, the supervisor
        # starts a replacement.
        (survivor,) = workers - {holder}
        os.kill(holder, signal.SIGKILL)
        killed_at = time.monotonic()

        def classify(i: int) -> int:
            """One request; a connection the dead worker's socket held is refused once, then retried."""
            try:
                return httpx.post(f"{url}/classify", json={"text": f"after {i}"}).status_code
            except httpx.TransportError:
                return httpx.post(f"{url}/classify", json={"text": f"after {i}"}).status_code

        assert {classify(i) for i in range(30)} == {200}

        def led_by_survivor() -> bool:
            found = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()
            return (found["controller"] or {}).get("pid") == survivor

        poll(led_by_survivor, "the surviving worker took the controller lease", 10)
        assert time.monotonic() - killed_at < 10
        status = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()["state"]
        assert status["phase"] == "progressing" and status["step_index"] == 0
        poll(lambda: teachers_of({survivor}), "the survivor took the shadow over", 10)

        def replaced() -> set[int] | None:
            children = {p for p in child_pids(supervisor.pid) if is_alive(p)}
            return children if len(children) == 2 and survivor in children else None

        (replacement,) = poll(replaced, "the supervisor started a replacement", 30) - {survivor}
        poll(lambda: replacement in answering(url, headers, 20), "the replacement answers on the port", 60)
        assert len(teachers_of({survivor, replacement})) == 1
        assert supervisor.poll() is None

        # A model registered by another process is loaded by every worker, with no reload asked.
        newcomer = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT), name="newcomer").ref

        def everywhere() -> bool:
            pinned = {"x-kdgate-model": newcomer}
            answers = [httpx.post(f"{url}/classify", json={"text": "a"}, headers=pinned) for _ in range(20)]
            return all(a.status_code == 200 for a in answers)

        poll(everywhere, "both workers serve a model registered after they started", 20)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)
    assert not any(is_alive(w) for w in (survivor, replacement))  # the workers stopped with it
