"""The continual loop on a real server: shifted-domain traffic → shadow records → re-distilled
classify-student@2 → gate passes → its canary is started and promoted by the judge."""

from __future__ import annotations

import time

import httpx

from distill.data import bbc_paragraphs
from tests.e2e.test_rollout_local import FAST, STUDENT
from tests.e2e.traffic import TrafficLoop

CANDIDATE = "classify-student@2"


def test_bbc_traffic_to_a_tweet_student_is_redistilled_and_promoted(serve) -> None:
    server = serve(
        redistill_enabled=True,
        redistill_min_new_records=300,
        redistill_check_seconds=1.0,
        redistill_threads=1,
        # Two steps keep the test short; the step machinery itself is covered in test_rollout_local.
        redistill_rollout={**FAST, "steps": [50, 100]},
        # The tiny test models are weak: absolute minimums off, comparisons with the parent on.
        redistill_gate={
            "min_agreement": 0.0,
            "max_kl": 10.0,
            "min_accuracy": 0.0,
            "max_accuracy_drop": 0.05,
            "max_kl_rise": 0.05,
        },
        rollout_tick_seconds=0.25,
    )
    headers = server.admin_headers()
    split = {"weights": {STUDENT: 100}}
    assert httpx.put(f"{server.url}/admin/traffic/classify", json=split, headers=headers).status_code == 200
    paragraphs = bbc_paragraphs(limit=500, seed=3)
    deadline = time.monotonic() + 420
    phase = None
    with TrafficLoop(server.url, paragraphs, threads=2, max_seconds=420) as loop:
        while time.monotonic() < deadline:
            r = httpx.get(f"{server.url}/admin/rollouts/classify", headers=headers)
            if r.status_code == 200:
                state = r.json()["state"]
                phase = state["phase"]
                if state["candidate"] == CANDIDATE and phase in ("promoted", "rolled_back"):
                    break
            time.sleep(1.0)
    assert phase == "promoted", phase
    assert set(loop.codes) == {200}
    models = httpx.get(f"{server.url}/admin/models", headers=headers).json()["models"]
    candidate = next(m for m in models if m["ref"] == CANDIDATE)
    gate = candidate["metrics"]["gate"]
    assert gate["passed"] and gate["candidate"]["recent_agreement"] >= gate["parent"]["recent_agreement"]
    events = httpx.get(f"{server.url}/admin/events", headers=headers).json()["events"]
    steps = [e for e in events if CANDIDATE in e["weights"]]
    assert [e["weights"][CANDIDATE] for e in steps] == [50, 100, 100]
    assert all(e["evidence"] for e in steps[1:])  # every judged step carries its figures
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=headers).json()["traffic"]["classify"]
    assert traffic == {CANDIDATE: 100}
