"""The topology of a cluster on one machine (deploy/local/): three `kdgate serve` replicas behind haproxy,
PostgreSQL as their state store, the registry and the shadow log on S3 (moto), a Prometheus scraping the
replicas that their rollout judge reads. All client traffic goes through haproxy.

One scenario, in order: a student published to the S3 registry from one place is loaded by every
replica on reload; a canary of it, judged from Prometheus by the one replica holding the store's lease,
is promoted; a faulty candidate after it is rolled back; every replica writes shadow records under its
own prefix in the bucket; with the S3 server stopped mid-traffic clients see no error and the replicas
count dropped records, and once it is back new records land again; the loop, apart from the replicas,
re-distils the promoted student from every replica's records in the bucket, registers the new one to S3
and starts its canary, which every replica serves."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.postgres import PostgresServer
from deploy.local.s3 import S3Server
from deploy.local.seed import copy_model
from deploy.local.topology import Topology
from deploy.local.traffic import TrafficLoop
from distill.faults import register_fault_model
from distill.registry import MANIFEST, FaultSpec, Registry
from distill.shadowlog.reader import read_shadow
from distill.shadowlog.segments import list_segments, task_dir
from tests.support import FAST, STUDENT, kdgate_in_process, metric_sum, poll

pytestmark = pytest.mark.slow

CANDIDATE = "classify-student@2"
REDISTILLED = "classify-student@3"
WATCH_RECORDS = 200
# The tiny models are weak and the held-out records few: the gate only has to let a sane candidate by
# (it is tested on its own in tests/integration/test_redistill.py).
WATCH_GATE = {"min_agreement": 0.0, "max_kl": 10.0, "min_accuracy": 0.0, "max_accuracy_drop": 0.2}
WATCH_GATE |= {"max_agreement_drop": 0.2, "max_kl_rise": 0.5, "max_ece_rise": None}
REPLICAS = {"replica-1", "replica-2", "replica-3"}


def segments_by_replica(shadow_url: str, since: float = 0.0) -> dict[str, set[str]]:
    """The shadow log's finished classify segments in the bucket sealed at `since` (epoch s) or later,
    by the replica folder holding them."""
    fs, directory = task_dir(shadow_url, "classify")
    found: dict[str, set[str]] = {}
    for segment in list_segments(fs, directory):
        if segment.time < since:
            continue
        found.setdefault(segment.path.rsplit("/", 2)[-2], set()).add(segment.path)
    return found


def wait_for_end(url: str, headers: dict[str, str], timeout: float = 180.0) -> dict[str, Any]:
    """The classify rollout's status once it has ended (promoted, rolled back or paused); `timeout`
    bounds a failure only."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()
        if status["state"]["phase"] in ("promoted", "rolled_back", "paused"):
            return status
        assert time.monotonic() < deadline, f"the rollout did not end within {timeout:g} s: {status}"
        time.sleep(0.25)


def rollout_to_its_end(
    url: str, headers: dict[str, str], candidate: str, tweets: list[str]
) -> dict[str, Any]:
    """Starts a FAST canary of `candidate` through `url` and sends tweets until it has ended; its status.
    Every client request must have been answered 200."""
    body = {"task": "classify", "candidate": candidate, **FAST}
    started = httpx.post(f"{url}/admin/rollouts", json=body, headers=headers)
    assert started.status_code == 201, started.text
    with TrafficLoop(url, tweets) as loop:
        status = wait_for_end(url, headers)
    assert set(loop.codes) == {200}, loop.codes
    return status


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def test_three_replicas_behind_haproxy_share_the_s3_registry_a_prometheus_canary_and_the_shadow_log(
    built_state: Path,
    s3_server: S3Server,
    postgres_server: PostgresServer,
    tmp_path: Path,
    tweets: list[str],
    topology_binaries: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marks = {"start": time.monotonic()}
    # Small shadow segments, so records reach the bucket within a second of being scored; and few held
    # while S3 is down, so each replica drops some within seconds even when the busy cores starve its
    # teacher (at the default 20 segments' worth, one replica's drops once took over 30 s to begin).
    settings = {"shadow_flush_rows": 8, "shadow_flush_seconds": 0.5, "shadow_max_pending_rows": 16}
    topology = Topology(
        built_state, tmp_path / "topology", settings=settings, s3=s3_server, postgres=postgres_server
    )
    with topology as topo:
        assert topo.registry is not None
        marks["up"] = time.monotonic()
        headers = topo.admin_headers()

        # (1) Published once to the S3 registry, loaded by every replica on reload, each serving it.
        copy_model(Registry(built_state), STUDENT, topo.registry, "classify-student", version=2)
        for replica in topo.replicas:
            reload = httpx.post(f"{replica.url}/admin/models/reload", headers=headers, timeout=60)
            assert reload.status_code == 200, f"{replica.replica_id}: {reload.text}"
        for replica in topo.replicas:
            pinned = httpx.post(
                f"{replica.url}/classify", json={"text": "a fine day"}, headers={"x-kdgate-model": CANDIDATE}
            )
            assert pinned.status_code == 200, f"{replica.replica_id}: {pinned.text}"
            assert pinned.headers["x-kdgate-model"] == CANDIDATE, replica.replica_id
            assert (replica.state_dir / "cache" / "models" / "classify-student" / "2" / MANIFEST).exists()
        marks["reloaded"] = time.monotonic()

        # (2) A canary judged from Prometheus, driven by the lease holder, all traffic through haproxy.
        def served() -> dict[str, float]:  # requests each replica served the candidate, pinned or not
            texts = {r.replica_id: metrics(r.url) for r in topo.replicas}
            return {r: metric_sum(t, "kdgate_requests_total", model=CANDIDATE) for r, t in texts.items()}

        before_canary, canary_started = served(), time.time()
        status = rollout_to_its_end(topo.url, headers, CANDIDATE, tweets)
        marks["promoted"] = time.monotonic()
        assert status["state"]["phase"] == "promoted", status
        assert status["controller"]["pid"] in {r.process.pid for r in topo.replicas}, status["controller"]
        events = httpx.get(f"{topo.url}/admin/events?task=classify", headers=headers).json()["events"]
        assert [e["weights"].get(CANDIDATE) for e in events] == [5, 25, 50, 100, 100], events
        assert all(e["actor"] == "judge" for e in events[1:]), events
        canary = {r: n - before_canary[r] for r, n in served().items()}
        assert all(canary.values()), f"haproxy sent the canary's requests to only some replicas: {canary}"

        # (3) A faulty candidate (every batch raises: the teacher answers for it, counted as fallbacks)
        # is rolled back by the judge, all traffic through haproxy, no client error.
        faulty = register_fault_model(topo.registry, FaultSpec(wraps=CANDIDATE, error_rate=1.0)).ref
        for replica in topo.replicas:
            reload = httpx.post(f"{replica.url}/admin/models/reload", headers=headers, timeout=60)
            assert reload.status_code == 200, f"{replica.replica_id}: {reload.text}"
        status = rollout_to_its_end(topo.url, headers, faulty, tweets)
        marks["faulty rolled back"] = time.monotonic()
        assert status["state"]["phase"] == "rolled_back", status
        last = httpx.get(f"{topo.url}/admin/events?task=classify", headers=headers).json()["events"][-1]
        assert last["to_phase"] == "rolled_back", last
        assert "error_burn" in {e["metric"] for e in last["evidence"] if e["verdict"] == "fail"}, last
        traffic = httpx.get(f"{topo.url}/admin/traffic", headers=headers).json()["traffic"]["classify"]
        assert traffic == {CANDIDATE: 100}, traffic

        # (4) Every replica's shadow records, under its own prefix in the bucket.
        poll(
            lambda: set(segments_by_replica(topo.shadow_url, since=canary_started)) == REPLICAS,
            f"shadow segments of the canary's traffic from each of {sorted(REPLICAS)} in {topo.shadow_url}",
        )

        # (7) The S3 server stops mid-traffic: no client error, drops counted; back, records land again.
        with TrafficLoop(topo.url, tweets) as loop:
            time.sleep(0.5)
            s3_server.stop()
            marks["s3 stopped"] = time.monotonic()
            try:
                for replica in topo.replicas:
                    poll(
                        lambda url=replica.url: metric_sum(
                            metrics(url), "kdgate_shadow_total", outcome="dropped", reason="storage"
                        ),
                        f"{replica.replica_id} counted shadow records dropped for storage",
                    )
            finally:
                s3_server.restart()
            marks["drops counted"] = time.monotonic()
            before = segments_by_replica(topo.shadow_url)

            def fresh() -> dict[str, set[str]]:  # segments written since S3 came back, by replica
                now = segments_by_replica(topo.shadow_url)
                return {r: paths - before.get(r, set()) for r, paths in now.items()}

            poll(
                lambda: {r for r, paths in fresh().items() if paths} == REPLICAS,
                f"new shadow segments of each of {sorted(REPLICAS)} once S3 was back",
            )
        marks["records again"] = time.monotonic()
        assert set(loop.codes) == {200}, loop.codes

        # (5) The loop, apart from the replicas (it reaches them through haproxy only), re-distils the
        # promoted student from every replica's records in the bucket, registers the new one to the S3
        # registry and (6) starts its canary through haproxy; the replicas that did not get the reload
        # load it on their own.
        assert read_shadow(topo.shadow_url, "classify", columns=["ts"]).num_rows >= WATCH_RECORDS
        for name, value in s3_server.env().items():
            monkeypatch.setenv(name, value)
        done = kdgate_in_process(
            *("distill", "watch", "--once", "--url", topo.url, "--token", topo.admin_token),
            *("--state-dir", str(tmp_path / "loop"), "--registry-url", topo.registry_url),
            *("--shadow-url", topo.shadow_url, "--min-new-records", str(WATCH_RECORDS)),
            *("--gate", json.dumps(WATCH_GATE), "--recipe", '{"min_steps": 10}', "--threads", "2"),
            *("--rollout-config", json.dumps({**FAST, "steps": [50, 100], "min_dwell_s": 600.0})),
        )
        marks["redistilled"] = time.monotonic()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"registered {REDISTILLED}; canary started" in done.stdout, done.stdout
        redistilled = Registry(tmp_path / "reader", topo.registry_url).get(REDISTILLED)
        assert redistilled.lineage.parent == CANDIDATE and redistilled.metrics["gate"]["passed"]
        rollout = httpx.get(f"{topo.url}/admin/rollouts/classify", headers=headers).json()["state"]
        assert rollout["candidate"] == REDISTILLED and rollout["phase"] == "progressing", rollout
        with TrafficLoop(topo.url, tweets) as loop:
            poll(
                lambda: all(
                    metric_sum(metrics(r.url), "kdgate_requests_total", model=REDISTILLED)
                    for r in topo.replicas
                ),
                f"each replica serving its canary share with {REDISTILLED}",
            )
        assert set(loop.codes) == {200}, loop.codes
        marks["canary everywhere"] = time.monotonic()
    marks["end"] = time.monotonic()
    laps = ", ".join(f"{b} +{marks[b] - marks[a]:.1f} s" for a, b in itertools.pairwise(marks))
    print(f"\ntopology timings: {laps}")
