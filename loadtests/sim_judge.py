"""Simulate many synthetic rollouts through the real judge and state machine; report error rates.

A/A streams (the candidate behaves exactly like the registered baseline: live disagreement equal to its
offline disagreement, same error rate, same latency) measure the false-rollback rate; streams with a
real regression measure the detection rate and how many ticks a rollback takes from the fault's onset.
Each tick is one "second": ~20 compared shadow samples, candidate requests in proportion to its weight,
and the cumulative observation since the step started goes through `rollout.machine.step`.

Deterministic for a seed, whatever --jobs. Prints a table and saves JSON.

Example:
    .venv/bin/python -m loadtests.sim_judge --aa-streams 500 --regression-streams 200 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rollout.machine import start, step
from rollout.model import Emit, Observation, Phase, RolloutConfig, Verdict

NORMAL = statistics.NormalDist()
LATENCY_SIGMA = 0.4  # log-normal spread of request latency


@dataclass(frozen=True)
class Behaviour:
    """How the candidate behaves (true values; the simulation draws noisy samples from them)."""

    disagreement: float = 0.11  # equal to the offline disagreement in the manifest: an A/A stream
    kl_mean: float = 0.15  # nats per compared sample
    error_rate: float = 0.002  # errors + fallbacks per request; the budget is 1%
    p99_ms: float = 150.0  # SLO is 250 ms


@dataclass(frozen=True)
class Scenario:
    name: str
    before: Behaviour  # until the onset tick
    after: Behaviour  # from the onset tick
    onset: int = 0

    @property
    def regression(self) -> bool:
        return self.before != self.after or self.onset > 0


AA = Behaviour()
SCENARIOS = [
    Scenario("aa", AA, AA),
    Scenario("disagreement_+8pt", AA, replace(AA, disagreement=0.19)),
    Scenario("error_rate_5pct", AA, replace(AA, error_rate=0.05)),
    Scenario("p99_2x_slo", AA, replace(AA, p99_ms=500.0)),
    Scenario("all_three", AA, replace(AA, disagreement=0.19, error_rate=0.05, p99_ms=500.0)),
    # Onset mid-rollout: the step's window already holds healthy samples that dilute the fault.
    Scenario("disagreement_+8pt_at_t150", AA, replace(AA, disagreement=0.19), onset=150),
]


def p99_estimate(rng: np.random.Generator, true_p99: float, requests: float) -> float | None:
    """Empirical p99 of n log-normal latencies, drawn via its order statistic (no n-sized arrays)."""
    n = int(requests)
    if n == 0:
        return None
    k = max(1, math.ceil(0.99 * n))
    u = float(rng.beta(k, n + 1 - k))  # the k-th of n uniforms
    u = min(max(u, 1e-12), 1 - 1e-12)
    median = true_p99 / math.exp(LATENCY_SIGMA * NORMAL.inv_cdf(0.99))
    return median * math.exp(LATENCY_SIGMA * NORMAL.inv_cdf(u))


def run_stream(args: tuple[Scenario, int, int, dict[str, Any], dict[str, float]]) -> dict[str, Any]:
    """One rollout, tick by tick until promoted, rolled back, paused or out of time."""
    scenario, index, seed, cfg_dict, p = args
    cfg = RolloutConfig.from_dict(cfg_dict)
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario), index])
    state, _ = start("classify", "teacher@1", "student@2", cfg, now=0.0)
    window = dict.fromkeys(("compared", "disagreed", "kl", "requests", "errors"), 0.0)
    outcome: dict[str, Any] = {"outcome": "held", "tick": None, "failed_metrics": []}
    for tick in range(1, int(p["max_ticks"]) + 1):
        b = scenario.after if tick >= scenario.onset else scenario.before
        compared = int(rng.poisson(p["compared_per_tick"]))
        requests = int(rng.poisson(p["requests_per_tick_at_100"] * state.weight / 100))
        window["compared"] += compared
        window["disagreed"] += int(rng.binomial(compared, b.disagreement))
        window["kl"] += float(rng.gamma(compared, b.kl_mean)) if compared else 0.0
        window["requests"] += requests
        window["errors"] += int(rng.binomial(requests, b.error_rate))
        if rng.random() < p["unreadable_rate"]:
            obs = Observation.could_not_measure("simulated scrape failure")
        else:
            obs = Observation(
                compared=window["compared"],
                disagreed=window["disagreed"],
                kl_sum=window["kl"],
                requests=window["requests"],
                errors=window["errors"],
                # Drawn afresh each tick (really they are correlated): pessimistic for false rollbacks.
                p99_ms=p99_estimate(rng, b.p99_ms, window["requests"]),
            )
        before = state
        state, actions = step(state, obs, cfg, now=float(tick))
        if state.step_index != before.step_index:  # the driver observes from the new step's start
            window = dict.fromkeys(window, 0.0)
        if state.phase is not Phase.PROGRESSING:
            outcome = {"outcome": state.phase.value, "tick": tick, "failed_metrics": []}
            for a in actions:
                if isinstance(a, Emit):
                    outcome["failed_metrics"] = [
                        e.metric for e in a.event.evidence if e.verdict is Verdict.FAIL
                    ]
            break
    return {"scenario": scenario.name, **outcome}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion (of the simulation itself, not of the judge)."""
    if n == 0:
        return [0.0, 1.0]
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def summarize(scenario: Scenario, runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(runs)
    by = {o: [r for r in runs if r["outcome"] == o] for o in ("promoted", "rolled_back", "paused", "held")}
    rb = by["rolled_back"]
    out: dict[str, Any] = {
        "streams": n,
        "onset_tick": scenario.onset,
        **{o: len(v) for o, v in by.items()},
        "rolled_back_rate": round(len(rb) / n, 4),
        "rolled_back_rate_ci95": wilson(len(rb), n),
    }
    if by["promoted"]:
        out["median_ticks_to_promote"] = statistics.median(r["tick"] for r in by["promoted"])
    if rb:
        delays = sorted(r["tick"] - scenario.onset for r in rb)
        out["median_ticks_to_detection"] = statistics.median(delays)
        out["p95_ticks_to_detection"] = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
        metrics: dict[str, int] = {}
        for r in rb:
            for m in r["failed_metrics"]:
                metrics[m] = metrics.get(m, 0) + 1
        out["failed_metrics"] = metrics
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--aa-streams", type=int, default=500, help="A/A rollouts to simulate (default 500)")
    ap.add_argument("--regression-streams", type=int, default=200, help="rollouts per regression scenario")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-ticks", type=int, default=1500, help="give up on a rollout after this many ticks")
    ap.add_argument("--compared-per-tick", type=float, default=20.0, help="mean shadow comparisons per tick")
    ap.add_argument(
        "--requests-per-tick", type=float, default=400.0, help="mean requests per tick at 100%% weight"
    )
    ap.add_argument("--unreadable-rate", type=float, default=0.01, help="chance a tick's scrape fails")
    ap.add_argument("--alpha", type=float, default=0.05, help="judge's false-rollback budget per rollout")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sim_judge.json")
    args = ap.parse_args(argv)

    cfg = RolloutConfig(offline_disagreement=AA.disagreement, alpha=args.alpha)
    params = {
        "max_ticks": args.max_ticks,
        "compared_per_tick": args.compared_per_tick,
        "requests_per_tick_at_100": args.requests_per_tick,
        "unreadable_rate": args.unreadable_rate,
    }
    jobs = [
        (sc, i, args.seed, cfg.to_dict(), params)
        for sc in SCENARIOS
        for i in range(args.regression_streams if sc.regression else args.aa_streams)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(run_stream, jobs, chunksize=8))
    elapsed = time.perf_counter() - t0

    results = {sc.name: summarize(sc, [r for r in runs if r["scenario"] == sc.name]) for sc in SCENARIOS}
    aa = results["aa"]
    regressions = {k: v for k, v in results.items() if k != "aa"}
    report = {
        "seed": args.seed,
        "params": params,
        "config": cfg.to_dict(),
        "behaviours": {sc.name: {"before": vars(sc.before), "after": vars(sc.after)} for sc in SCENARIOS},
        "false_rollback_rate": aa["rolled_back_rate"],
        "detection_rate": min(v["rolled_back_rate"] for v in regressions.values()),
        "targets": {"false_rollback_rate_max": 0.05, "detection_rate_min": 0.95},
        "scenarios": results,
        "elapsed_s": round(elapsed, 1),
    }
    report["targets_met"] = report["false_rollback_rate"] <= 0.05 and report["detection_rate"] >= 0.95

    print(
        f"{'scenario':28} {'streams':>7} {'rolled back':>12} {'95% CI':>16} {'promoted':>8} "
        f"{'held':>5} {'med ticks':>9} {'p95':>5}"
    )
    for name, r in results.items():
        ticks = r.get("median_ticks_to_detection" if name != "aa" else "median_ticks_to_promote", "-")
        p95 = r.get("p95_ticks_to_detection", "-") if name != "aa" else "-"
        ci = f"[{r['rolled_back_rate_ci95'][0]:.3f}, {r['rolled_back_rate_ci95'][1]:.3f}]"
        print(
            f"{name:28} {r['streams']:7d} {r['rolled_back_rate']:12.3f} {ci:>16} {r['promoted']:8d} "
            f"{r['held'] + r['paused']:5d} {ticks!s:>9} {p95!s:>5}"
        )
    print(f"false-rollback rate (A/A): {report['false_rollback_rate']:.3f} (target <= 0.05)")
    print(f"detection rate (worst regression scenario): {report['detection_rate']:.3f} (target >= 0.95)")
    print(f"med ticks: to promotion for aa, from onset to candidate weight 0 otherwise; {elapsed:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0 if report["targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
