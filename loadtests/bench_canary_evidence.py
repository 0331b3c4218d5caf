"""How fast a 5% canary gathers its compared samples under load: candidate favoured by the shadow or not.

    .venv/bin/python -m loadtests.bench_canary_evidence --state-dir .kdgate

The rollout judge needs `min_samples` (default 200) of the candidate's requests compared with the
teacher before a step can pass. Under load the shadow teacher cannot score every request (CPU budget,
SCHED_IDLE): with a plain FIFO queue the candidate gets its traffic share of what the teacher scores, and
a 5% canary waits for evidence ~20x longer than the teacher's capacity needs. `shadow_favour_candidates`
(default on) scores the candidate first and keeps a quarter of the queue for it (gateway/shadow/queue.py).

Setup, per gateway: the latest classify student serves 100%; a copy of it (a fault model with no fault:
the same model, its own ref) is the candidate of a rollout at 5% that cannot move on (an hour's dwell,
guards far away). Load: c=8, lean clients, tweets. One gateway per setting, in the order on, off, off,
on, … (`--repeats`); each gets a warm-up and then `--rounds` rounds of `--requests`.

Reported per setting: the candidate's requests and the share of them compared, its compared samples per
second, the seconds a step needs for 200 of them at that pace; the stable student's compared share
(what favouring the candidate takes from it); served p50/p99 (favouring should cost the client nothing:
the same teacher work, in another order). Writes loadtests/results/bench_canary_evidence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from distill.classify.build import STUDENT_NAME, load_split
from distill.classify.recipe import ClassifyRecipe
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from loadtests._server import admin_headers, gateway, scratch_copy
from loadtests.bench_gateway import lean_load
from loadtests.bench_shadow import wait_for_shadow_idle

CANARY_PERCENT = 5
MIN_SAMPLES = 200  # the judge's default


def per_model(url: str, metric: str) -> dict[str, float]:
    """A counter's value per `model` label, from the gateway's /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(metric + "{"):
            model = line.split('model="', 1)[1].split('"', 1)[0]
            out[model] = out.get(model, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def start_canary(url: str, headers: dict[str, str], stable: str, candidate: str) -> None:
    split = {"weights": {stable: 100}}
    httpx.put(f"{url}/admin/traffic/classify", json=split, headers=headers).raise_for_status()
    rollout = {
        "task": "classify",
        "candidate": candidate,
        "steps": [CANARY_PERCENT, 100],
        "min_dwell_s": 3600.0,  # stays at 5% for the whole bench
        "max_disagreement": 0.95,
        "max_kl": 9.0,
        "p99_slo_ms": 10_000.0,
    }
    httpx.post(f"{url}/admin/rollouts", json=rollout, headers=headers).raise_for_status()


def run_gateway(
    state: Path, favour: bool, stable: str, candidate: str, texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    with gateway(state, shadow_favour_candidates=favour) as url:
        headers = admin_headers(state)
        start_canary(url, headers, stable, candidate)
        lean_load(url, texts, args.concurrency, 300)  # warm-up
        wait_for_shadow_idle(url)
        eligible0 = per_model(url, "kdgate_shadow_eligible_total")
        compared0 = per_model(url, "kdgate_shadow_compared_total")
        latencies: list[np.ndarray] = []
        started = time.monotonic()
        for i in range(args.rounds):
            chunk = texts[(i * 97) % len(texts) :] + texts
            latencies.append(
                np.asarray(lean_load(url, chunk, args.concurrency, args.requests)["latencies_ms"])
            )
        seconds = time.monotonic() - started
        eligible = per_model(url, "kdgate_shadow_eligible_total")
        compared = per_model(url, "kdgate_shadow_compared_total")
        phase = httpx.get(f"{url}/admin/rollouts/classify", headers=headers).json()["state"]["phase"]
    served = {m: eligible.get(m, 0.0) - eligible0.get(m, 0.0) for m in (stable, candidate)}
    done = {m: compared.get(m, 0.0) - compared0.get(m, 0.0) for m in (stable, candidate)}
    per_s = done[candidate] / seconds
    all_ms = np.concatenate(latencies)
    result = {
        "favour_candidates": favour,
        "seconds": round(seconds, 1),
        "rollout_phase_at_end": phase,  # "progressing": the canary held its 5% throughout
        "candidate_requests": served[candidate],
        "candidate_compared": done[candidate],
        "candidate_compared_share": done[candidate] / max(served[candidate], 1.0),
        "candidate_compared_per_s": per_s,
        "seconds_to_min_samples": MIN_SAMPLES / per_s if per_s else None,
        "stable_requests": served[stable],
        "stable_compared_share": done[stable] / max(served[stable], 1.0),
        "p50_ms": float(np.percentile(all_ms, 50)),
        "p99_ms": float(np.percentile(all_ms, 99)),
    }
    print(json.dumps(result), flush=True)
    return result


def summary(runs: list[dict[str, Any]], favour: bool) -> dict[str, float]:
    mine = [r for r in runs if r["favour_candidates"] is favour]
    keys = (
        "candidate_compared_share",
        "candidate_compared_per_s",
        "stable_compared_share",
        "p50_ms",
        "p99_ms",
    )
    out = {k: float(np.mean([r[k] for r in mine])) for k in keys}
    out["seconds_to_min_samples"] = MIN_SAMPLES / out["candidate_compared_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per gateway")
    parser.add_argument("--repeats", type=int, default=2, help="gateways per setting (on, off, off, on, …)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_canary_evidence.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stable = Registry(args.state_dir).latest(STUDENT_NAME)
    if stable is None:
        raise SystemExit(f"no student in {args.state_dir}; run `kdgate serve` once first")
    texts = load_split(ClassifyRecipe()).test.texts[:1000]
    order = [(i % 4) in (0, 3) for i in range(2 * args.repeats)]  # on, off, off, on, …
    runs = []
    for favour in order:
        with scratch_copy(args.state_dir) as state:  # each gateway starts afresh: no rollout, no log
            candidate = register_fault_model(Registry(state), FaultSpec(wraps=stable.ref), "canary-copy").ref
            runs.append(run_gateway(state, favour, stable.ref, candidate, texts, args))
    on, off = summary(runs, True), summary(runs, False)
    report = {
        "stable": stable.ref,
        "candidate": candidate,
        "canary_percent": CANARY_PERCENT,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "favoured": on,
        "fifo": off,
        "evidence_speedup": on["candidate_compared_per_s"] / max(off["candidate_compared_per_s"], 1e-9),
        "p99_change_pct": 100.0 * (on["p99_ms"] / off["p99_ms"] - 1.0),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
