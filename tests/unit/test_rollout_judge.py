"""Unit tests of rollout.judge (confidence sequences and verdicts) and rollout.model (config, JSON)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rollout.model
from rollout.judge import bound_alpha, confidence_interval, judge, log_wealth
from rollout.model import (
    Event,
    Evidence,
    InvalidRolloutConfig,
    Observation,
    Phase,
    RolloutConfig,
    RolloutState,
    Verdict,
)

CFG = RolloutConfig(offline_disagreement=0.11)  # disagreement max 0.14
# Every guard passes: 0.11 disagreement over plenty of samples, low KL, no errors, fast.
GOOD = Observation(
    compared=6000, disagreed=660, kl_sum=900.0, requests=6000, errors=3, p99_ms=120.0, baseline_p99_ms=110.0
)


def verdicts(obs: Observation, cfg: RolloutConfig = CFG) -> dict[str, Verdict]:
    return {e.metric: e.verdict for e in judge(obs, cfg)}


# --- confidence sequence ---------------------------------------------------------------------------


def test_interval_contains_estimate_and_shrinks() -> None:
    widths = []
    for n in (50, 200, 1000, 5000):
        lo, hi = confidence_interval(0.11 * n, n, 0.01)
        assert 0.0 <= lo < 0.11 < hi <= 1.0
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)


def test_interval_edges() -> None:
    assert confidence_interval(0, 0, 0.05) == (0.0, 1.0)
    lo, hi = confidence_interval(0, 1000, 0.05)
    assert lo == 0.0 and 0.0 < hi < 0.02
    lo, hi = confidence_interval(1000, 1000, 0.05)
    assert 0.98 < lo < 1.0 and hi == 1.0


def test_interval_ends_are_the_ville_boundary() -> None:
    # At each end the mixture wealth equals 1/alpha: the interval is exactly {m : M_n(m) < 1/alpha}.
    lo, hi = confidence_interval(230, 2000, 0.01)
    for m in (lo, hi):
        assert log_wealth(230, 2000, m) == pytest.approx(math.log(100), abs=1e-6)


@pytest.mark.parametrize(
    ("s", "n"), [(5e-324, 1.0), (5e-324, 5e-324), (1e-300, 2e-300), (1e15 - 1, 1e15), (0.5, 1.0), (1.0, 1.0)]
)
def test_interval_extreme_inputs(s: float, n: float) -> None:
    lo, hi = confidence_interval(s, n, 1e-6)
    assert 0.0 <= lo <= s / n <= hi <= 1.0


def test_smaller_alpha_is_wider() -> None:
    lo1, hi1 = confidence_interval(110, 1000, 0.05)
    lo2, hi2 = confidence_interval(110, 1000, 0.001)
    assert lo2 < lo1 and hi2 > hi1


def test_time_uniform_coverage() -> None:
    # Looking after every 25 samples up to 2000 must still miss the true rate at most ~alpha of the time
    # (a fixed-n interval looked at 80 times would miss far more often).
    rng, p, alpha, misses, runs = random.Random(7), 0.11, 0.1, 0, 300
    for _ in range(runs):
        k = 0
        for i in range(1, 2001):
            k += rng.random() < p
            if i % 25 == 0:
                lo, hi = confidence_interval(k, i, alpha)
                if not lo <= p <= hi:
                    misses += 1
                    break
    assert misses / runs <= alpha


def test_alpha_is_split_over_guards_and_steps() -> None:
    assert bound_alpha(CFG) == pytest.approx(0.05 / (3 * 4))
    assert bound_alpha(replace(CFG, max_kl=None, steps=(50, 100))) == pytest.approx(0.05 / (2 * 2))


@settings(max_examples=200, deadline=None)
@given(
    n=st.floats(0, 1e9, allow_nan=False),
    frac=st.floats(0, 1),
    alpha=st.floats(1e-6, 0.5),
)
def test_interval_is_ordered_and_in_range(n: float, frac: float, alpha: float) -> None:
    lo, hi = confidence_interval(frac * n, n, alpha)
    assert 0.0 <= lo <= hi <= 1.0
    if n > 0:
        assert lo <= frac * n / n + 1e-9 and hi >= frac * n / n - 1e-9


# --- verdicts: table, one input flipped at a time --------------------------------------------------


def test_good_observation_passes_everything() -> None:
    assert set(verdicts(GOOD).values()) == {Verdict.PASS}


@pytest.mark.parametrize(
    ("change", "metric", "expected"),
    [
        ({"disagreed": 1320}, "disagreement", Verdict.FAIL),  # 22% vs max 14%
        ({"disagreed": 820}, "disagreement", Verdict.INCONCLUSIVE),  # 13.7%: too close to tell
        ({"compared": 150, "disagreed": 5, "kl_sum": 10.0}, "disagreement", Verdict.INCONCLUSIVE),  # n < 200
        ({"compared": 0, "disagreed": 0, "kl_sum": 0.0}, "disagreement", Verdict.INCONCLUSIVE),
        ({"compared": math.nan}, "disagreement", Verdict.INCONCLUSIVE),
        ({"disagreed": -1}, "disagreement", Verdict.INCONCLUSIVE),
        ({"disagreed": 7000}, "disagreement", Verdict.INCONCLUSIVE),  # more disagreements than samples
        ({"kl_sum": 6000.0}, "kl", Verdict.FAIL),  # mean 1.0 nats vs 0.5
        ({"kl_sum": math.inf}, "kl", Verdict.INCONCLUSIVE),
        ({"kl_sum": -1.0}, "kl", Verdict.INCONCLUSIVE),
        ({"errors": 300}, "error_burn", Verdict.FAIL),  # 5% vs budget 1% × burn 2
        ({"errors": 100}, "error_burn", Verdict.INCONCLUSIVE),  # 1.7%: near the 2% limit
        ({"requests": 50, "errors": 0}, "error_burn", Verdict.INCONCLUSIVE),  # n < min_requests
        ({"requests": 0, "errors": 0}, "error_burn", Verdict.INCONCLUSIVE),
        ({"errors": math.nan}, "error_burn", Verdict.INCONCLUSIVE),
        ({"p99_ms": 500.0}, "p99_ms", Verdict.FAIL),
        ({"p99_ms": None}, "p99_ms", Verdict.INCONCLUSIVE),
        ({"p99_ms": math.nan}, "p99_ms", Verdict.INCONCLUSIVE),
        ({"requests": 50, "errors": 0, "p99_ms": 900.0}, "p99_ms", Verdict.INCONCLUSIVE),  # too few
    ],
)
def test_one_input_flipped(change: dict[str, Any], metric: str, expected: Verdict) -> None:
    got = verdicts(replace(GOOD, **change))
    assert got[metric] is expected
    # Only the flipped metric's guard (and those sharing its inputs) may move away from PASS.
    shared = {"compared": {"disagreement", "kl"}, "requests": {"error_burn", "p99_ms"}}
    allowed = {metric}.union(*(shared.get(k, set()) for k in change))
    assert all(v is Verdict.PASS for m, v in got.items() if m not in allowed)


def test_absolute_maximum_overrides_offline_margin() -> None:
    obs = replace(GOOD, disagreed=1320)  # 22%
    assert verdicts(obs)["disagreement"] is Verdict.FAIL
    assert verdicts(obs, replace(CFG, max_disagreement=0.3))["disagreement"] is Verdict.PASS


def test_offline_disagreement_sets_the_bar() -> None:
    # A student that disagreed 11% offline is not rolled back for 11% live; one that agreed 95% offline is.
    obs = replace(GOOD, disagreed=660)
    assert verdicts(obs, replace(CFG, offline_disagreement=0.11))["disagreement"] is Verdict.PASS
    assert verdicts(obs, replace(CFG, offline_disagreement=0.05))["disagreement"] is Verdict.FAIL


def test_no_disagreement_threshold_is_inconclusive() -> None:
    assert verdicts(GOOD, RolloutConfig())["disagreement"] is Verdict.INCONCLUSIVE


def test_kl_guard_can_be_disabled() -> None:
    assert "kl" not in verdicts(GOOD, replace(CFG, max_kl=None))


def test_kl_is_clipped_to_the_cap() -> None:
    ev = {e.metric: e for e in judge(replace(GOOD, kl_sum=1e12), CFG)}["kl"]
    assert ev.verdict is Verdict.FAIL and ev.estimate == pytest.approx(CFG.kl_cap)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, Verdict.PASS),  # 120 / 110
        ({"p99_ms": 200.0}, Verdict.FAIL),  # 1.8× baseline, still under the SLO
        ({"baseline_p99_ms": None}, Verdict.INCONCLUSIVE),
        ({"baseline_p99_ms": 0.0}, Verdict.INCONCLUSIVE),
        ({"requests": 10, "errors": 0}, Verdict.INCONCLUSIVE),
    ],
)
def test_p99_ratio_vs_baseline(change: dict[str, Any], expected: Verdict) -> None:
    cfg = replace(CFG, max_p99_ratio_vs_baseline=1.5)
    assert verdicts(replace(GOOD, **change), cfg)["p99_ratio"] is expected


def test_unreadable_source_is_all_inconclusive() -> None:
    ev = judge(Observation.could_not_measure("connection refused"), CFG)
    assert {e.verdict for e in ev} == {Verdict.INCONCLUSIVE}
    assert "connection refused" in ev[0].message


def test_evidence_carries_bounds_and_samples() -> None:
    ev = {e.metric: e for e in judge(GOOD, CFG)}
    d = ev["disagreement"]
    assert d.lower is not None and d.upper is not None and d.estimate is not None
    assert d.estimate == pytest.approx(0.11) and d.threshold == pytest.approx(0.14)
    assert d.threshold is not None and d.lower < d.estimate < d.upper < d.threshold
    assert d.n == 6000 and "disagreement" in d.message
    burn = ev["error_burn"]
    assert burn.estimate == pytest.approx(3 / 6000 / 0.01) and burn.threshold == 2.0


# --- properties ------------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(-10, 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1e6),
)
observations = st.builds(
    Observation,
    compared=numbers,
    disagreed=numbers,
    kl_sum=numbers,
    requests=numbers,
    errors=numbers,
    p99_ms=st.one_of(st.none(), numbers),
    baseline_p99_ms=st.one_of(st.none(), numbers),
    unreadable=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(obs=observations, ratio=st.sampled_from([None, 1.5]))
def test_judge_is_total_and_consistent(obs: Observation, ratio: float | None) -> None:
    cfg = replace(CFG, max_p99_ratio_vs_baseline=ratio)
    for e in judge(obs, cfg):
        if e.verdict is Verdict.FAIL and e.lower is not None:
            assert e.threshold is not None and e.lower > e.threshold
        if e.verdict is Verdict.PASS:
            assert e.estimate is not None and math.isfinite(e.estimate) and e.n > 0
            if e.upper is not None:
                assert e.threshold is not None and e.upper < e.threshold
                assert e.n >= min(cfg.min_samples, cfg.min_requests)
        if e.lower is not None and e.upper is not None and e.estimate is not None:
            assert e.lower <= e.estimate + 1e-9 and e.estimate <= e.upper + 1e-9


@settings(max_examples=100, deadline=None)
@given(obs=observations)
def test_no_data_never_passes(obs: Observation) -> None:
    empty = replace(obs, compared=0, disagreed=0, kl_sum=0.0, requests=0, errors=0)
    assert all(e.verdict is not Verdict.PASS for e in judge(empty, CFG))
    if obs.unreadable:
        assert all(e.verdict is Verdict.INCONCLUSIVE for e in judge(obs, CFG))


# --- config validation and JSON round trips ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": ()}, "steps"),
        ({"steps": (5, 5, 100)}, "steps"),
        ({"steps": (50, 25, 100)}, "steps"),
        ({"steps": (5, 25, 50)}, "steps"),
        ({"steps": (0, 100)}, "steps"),
        ({"steps": (5, 150)}, "steps"),
        ({"steps": (5.5, 100)}, "steps"),
        ({"min_dwell_s": -1.0}, "min_dwell_s"),
        ({"min_dwell_s": math.nan}, "min_dwell_s"),
        ({"min_samples": -1}, "min_samples"),
        ({"min_samples": 2.5}, "min_samples"),
        ({"offline_disagreement": 1.5}, "offline_disagreement"),
        ({"offline_disagreement": 0.99}, "disagreement_margin"),
        ({"offline_disagreement": 1.0}, "disagreement_margin"),  # valid alone; no margin can sit above it
        ({"max_disagreement": 0.0}, "max_disagreement"),
        ({"max_kl": -0.1}, "max_kl"),
        ({"max_kl": 20.0}, "max_kl"),  # above the cap
        ({"error_budget": 0.0}, "error_budget"),
        ({"max_burn_rate": 200.0}, "max_burn_rate"),
        ({"p99_slo_ms": math.inf}, "p99_slo_ms"),
        ({"max_p99_ratio_vs_baseline": 0.0}, "max_p99_ratio_vs_baseline"),
        ({"failure_limit": 0}, "failure_limit"),
        ({"inconclusive_limit": 0}, "inconclusive_limit"),
        ({"could_not_measure_limit": -1}, "could_not_measure_limit"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": True}, "alpha"),
    ],
)
def test_invalid_config_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRolloutConfig) as info:
        RolloutConfig(**{"offline_disagreement": 0.11, **change})
    assert info.value.field == field and field in str(info.value)


def test_config_from_dict_refuses_unknown_keys_and_round_trips() -> None:
    with pytest.raises(InvalidRolloutConfig) as info:
        RolloutConfig.from_dict({"stepz": [5, 100]})
    assert info.value.field == "stepz"
    cfg = RolloutConfig(steps=(10, 100), offline_disagreement=0.2, max_p99_ratio_vs_baseline=1.3)
    assert RolloutConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert RolloutConfig.from_dict({"steps": [1, 100]}).steps == (1, 100)


def test_state_and_event_round_trip_through_json() -> None:
    state = RolloutState(Phase.PAUSED, "classify", "t@1", "s@3", 2, 50, 12.5, 0, 3, 1, "why", 20.0)
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    ev = judge(GOOD, CFG)
    event = Event(
        "classify", 1.0, "judge", Phase.PROGRESSING, Phase.ROLLED_BACK, 1, {"t@1": 100}, "x", tuple(ev)
    )
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    assert Evidence.from_dict(ev[0].to_dict()) == ev[0]


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"phase": "exploded"},
        {"phase": "idle", "task": "x"},
        {**RolloutState.idle("x").to_dict(), "weight": 101},
    ],
)
def test_corrupt_state_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(rollout.model.CorruptState):
        RolloutState.from_dict(bad)


def test_an_offline_disagreement_of_one_is_accepted_with_an_absolute_maximum() -> None:
    cfg = RolloutConfig(offline_disagreement=1.0, max_disagreement=0.95)
    assert cfg.disagreement_max == 0.95
