"""The local topology (deploy/local/: three replicas behind haproxy, PostgreSQL, S3, Prometheus), measured.

    .venv/bin/python -m loadtests.bench_topology --seed .kdgate [--rollbacks 3] [--rounds 6]

- **Fault onset → weight 0:** a fault model wrapping the student (every batch raises; the teacher
  answers for it, counted as fallbacks) is published to the S3 registry, every replica reloads, and a
  canary of it starts through haproxy while clients send traffic through haproxy. The figure is the wall
  time from the start request to the first `GET /admin/traffic` (through haproxy) where its weight is 0:
  Prometheus's scrape (1 s), the judge's tick (1 s) on the lease holder, the PromQL window (2 s), the
  store's propagation. One new fault version per round.
- **Added latency:** sequential single-text `/classify` requests (one client, so latency, not queueing)
  through haproxy and straight to replica-1, in alternating rounds of the same run (ABBA order), p50
  and p99 of each and the p50 difference per round.

`--seed` is a state dir holding classify-teacher and classify-student (e.g. the tests' tiny built state,
or `.kdgate` after `kdgate serve` built its default models). Writes loadtests/results/bench_topology.json.
Client and servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx
import numpy as np

from deploy.local.topology import Topology
from deploy.local.traffic import TrafficLoop
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Role

# The e2e scenarios' rollout thresholds (tests/support.py FAST): steps decide on ~30 requests.
ROLLOUT = {
    "steps": [5, 25, 50, 100],
    "min_dwell_s": 1.0,
    "min_samples": 30,
    "min_requests": 30,
    "max_disagreement": 0.6,
    "error_budget": 0.1,
    "p99_slo_ms": 1000.0,
    "max_kl": 3.0,
}
TEXTS = [f"review {i}: the service was {w}" for i, w in enumerate(["great", "awful", "fine", "slow"] * 50)]


def rollback_time(topo: Topology, student: str, round_no: int) -> dict[str, Any]:
    """One faulty canary through haproxy: seconds from its start to its weight 0, and what clients saw."""
    assert topo.registry is not None
    headers = topo.admin_headers()
    faulty = register_fault_model(topo.registry, FaultSpec(wraps=student, error_rate=1.0, seed=round_no)).ref
    for replica in topo.replicas:
        httpx.post(f"{replica.url}/admin/models/reload", headers=headers, timeout=60).raise_for_status()
    with TrafficLoop(topo.url, TEXTS) as traffic:
        time.sleep(1.0)  # clients running before the fault's onset
        started = time.monotonic()
        body = {"task": "classify", "candidate": faulty, **ROLLOUT}
        httpx.post(f"{topo.url}/admin/rollouts", json=body, headers=headers, timeout=30).raise_for_status()
        deadline = started + 300
        seen_weight = False
        while time.monotonic() < deadline:
            split = httpx.get(f"{topo.url}/admin/traffic", headers=headers, timeout=10).json()["traffic"]
            weight = split["classify"].get(faulty, 0)
            seen_weight = seen_weight or weight > 0
            if seen_weight and weight == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{faulty} still had weight after 300 s")
        elapsed = time.monotonic() - started
    phase = httpx.get(f"{topo.url}/admin/rollouts/classify", headers=headers).json()["state"]["phase"]
    return {
        "candidate": faulty,
        "seconds": round(elapsed, 2),
        "phase": phase,
        "client_codes": dict(traffic.codes),
    }


def latencies(url: str, n: int) -> list[float]:
    """`n` sequential /classify requests; their wall times in ms."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            began = time.perf_counter()
            client.post("/classify", json={"text": TEXTS[i % len(TEXTS)]}).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
    return times


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values_ms), 2),
        "p99_ms": round(float(np.percentile(values_ms, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=Path, required=True, help="state dir with classify teacher + student")
    parser.add_argument("--rollbacks", type=int, default=3, help="faulty canaries, one after the other")
    parser.add_argument("--rounds", type=int, default=6, help="latency rounds (each: haproxy and direct)")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency round and target")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_topology.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdgate-bench-topology-") as tmp:
        began = time.monotonic()
        with Topology(seed=args.seed, root=Path(tmp)) as topo:
            assert topo.registry is not None
            up_s = time.monotonic() - began
            student = max(
                (
                    m
                    for m in topo.registry.list()
                    if m.task == "classify" and m.role is Role.STUDENT and m.kind == "model"
                ),
                key=lambda m: m.version,
            ).ref
            rollbacks = [rollback_time(topo, student, i) for i in range(1, args.rollbacks + 1)]
            for _ in range(2):  # warm both paths (connections, model threads) before measuring
                latencies(topo.url, 20), latencies(topo.replicas[0].url, 20)
            targets = {"haproxy": topo.url, "direct": topo.replicas[0].url}
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                order = ["haproxy", "direct"] if r % 2 == 0 else ["direct", "haproxy"]
                measured = {name: summary(latencies(targets[name], args.requests)) for name in order}
                added = measured["haproxy"]["p50_ms"] - measured["direct"]["p50_ms"]
                rounds.append({"order": order, **measured, "added_p50_ms": round(added, 2)})
    seconds = [r["seconds"] for r in rollbacks]
    report = {
        "cpus": os.cpu_count(),
        "replicas": 3,
        "topology_up_seconds": round(up_s, 1),
        "rollout": ROLLOUT,
        "fault_onset_to_weight_0": {
            "rounds": rollbacks,
            "median_s": round(statistics.median(seconds), 2),
            "max_s": max(seconds),
        },
        "latency": {
            "requests_per_round": args.requests,
            "rounds": rounds,
            "median_added_p50_ms": round(statistics.median(r["added_p50_ms"] for r in rounds), 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
