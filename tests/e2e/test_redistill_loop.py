"""The continual loop on a real server: shifted-domain traffic → shadow records → re-distilled
classify-student@2 → gate passes → its canary is started and promoted by the judge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from distill.data import bbc_paragraphs
from distill.shadowread import read_shadow
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


def test_standalone_watch_redistils_and_starts_a_canary_on_the_gateway(serve, state_dir) -> None:
    """`kdgate distill watch --once` as its own process beside the gateway: trigger → gated student@2
    → loaded by the gateway over the admin API → its canary progressing."""
    server = serve()
    headers = server.admin_headers()
    split = {"weights": {STUDENT: 100}}
    assert httpx.put(f"{server.url}/admin/traffic/classify", json=split, headers=headers).status_code == 200
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i, text in enumerate(bbc_paragraphs(limit=300, seed=5)):
            assert client.post("/classify", json={"text": text}, headers={"x-kdgate-key": f"u{i}"}).is_success
    deadline = time.monotonic() + 60
    while read_shadow(str(state_dir / "shadow"), "classify", columns=["ts"]).num_rows < 250:
        assert time.monotonic() < deadline, "the shadow log did not fill"
        time.sleep(0.5)
    # The tiny models are weak and 300 records are few: the gate only has to let a sane candidate by.
    gate = {"min_agreement": 0.0, "max_kl": 10.0, "min_accuracy": 0.0, "max_accuracy_drop": 0.05}
    gate |= {"max_agreement_drop": 0.05, "max_kl_rise": 0.1}
    kdgate = Path(sys.executable).with_name("kdgate")
    cmd = [str(kdgate), "distill", "watch", "--once", "--url", server.url, "--state-dir", str(state_dir)]
    cmd += ["--min-new-records", "200", "--gate", json.dumps(gate)]
    cmd += ["--rollout-config", json.dumps({**FAST, "steps": [50, 100], "min_dwell_s": 600.0})]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"registered {CANDIDATE}; canary started" in done.stdout, done.stdout
    rollout = httpx.get(f"{server.url}/admin/rollouts/classify", headers=headers).json()["state"]
    assert rollout["candidate"] == CANDIDATE and rollout["phase"] == "progressing"
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=headers).json()["traffic"]["classify"]
    assert traffic[CANDIDATE] == 50
    # A second look right away does nothing: the canary is running.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "rollout is progressing" in again.stdout, again.stdout
