"""Unit tests of rollout.machine: the tick (`step`) and the operator commands."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.judge import judge
from rollout.machine import InvalidTransition, abort, pause, promote, resume, start, step
from rollout.model import (
    Action,
    Emit,
    InvalidRolloutConfig,
    Observation,
    Phase,
    RecordEvidence,
    RolloutConfig,
    RolloutState,
    SetWeights,
    Verdict,
)

CFG = RolloutConfig(offline_disagreement=0.11, min_dwell_s=30.0)
GOOD = Observation(compared=6000, disagreed=660, kl_sum=900.0, requests=6000, errors=3, p99_ms=120.0)
HOLD = replace(GOOD, compared=100, disagreed=11, kl_sum=15.0)  # too few samples: inconclusive
BAD = replace(GOOD, disagreed=1500)  # 25% vs max 14%
T0 = 1000.0


def started(cfg: RolloutConfig = CFG) -> RolloutState:
    return start("classify", "teacher@1", "student@3", cfg, now=T0)[0]


def at_step(index: int, cfg: RolloutConfig = CFG) -> RolloutState:
    s = started(cfg)
    return replace(s, step_index=index, weight=cfg.steps[index])


def weights_of(actions: list[Action]) -> list[dict[str, int]]:
    return [a.weights for a in actions if isinstance(a, SetWeights)]


def events_of(actions: list[Action]) -> list[Emit]:
    return [a for a in actions if isinstance(a, Emit)]


# --- table: one input flipped at a time -------------------------------------------------------------


def test_start_sets_first_step_weights() -> None:
    s, actions = start("classify", "teacher@1", "student@3", CFG, now=T0)
    assert (s.phase, s.step_index, s.weight, s.step_started_at) == (Phase.PROGRESSING, 0, 5, T0)
    assert weights_of(actions) == [{"teacher@1": 95, "student@3": 5}]
    (emit,) = events_of(actions)
    assert (emit.event.from_phase, emit.event.to_phase, emit.event.actor) == (
        Phase.IDLE,
        Phase.PROGRESSING,
        "operator",
    )


def test_all_pass_after_dwell_advances() -> None:
    s, actions = step(started(), GOOD, CFG, now=T0 + 30)
    assert (s.phase, s.step_index, s.weight, s.step_started_at) == (Phase.PROGRESSING, 1, 25, T0 + 30)
    assert weights_of(actions) == [{"teacher@1": 75, "student@3": 25}]
    assert "advanced to step 2/4" in s.last_reason
    (emit,) = events_of(actions)
    assert emit.event.actor == "judge" and len(emit.event.evidence) == 4


@pytest.mark.parametrize(
    ("obs", "now", "why"),
    [
        (GOOD, T0 + 29.9, "dwell not met"),
        (HOLD, T0 + 60, "too few samples"),
        (replace(GOOD, disagreed=830), T0 + 60, "disagreement too close to the max to tell"),
        (replace(GOOD, p99_ms=None), T0 + 60, "no latency data"),
        (replace(GOOD, requests=0, errors=0), T0 + 60, "no requests"),
        (replace(GOOD, compared=math.nan), T0 + 60, "NaN from the source"),
        (GOOD, math.nan, "clock unusable"),
    ],
)
def test_holds(obs: Observation, now: float, why: str) -> None:
    before = started()
    s, actions = step(before, obs, CFG, now=now)
    assert (s.phase, s.step_index, s.weight) == (Phase.PROGRESSING, 0, 5), why
    assert weights_of(actions) == [] and events_of(actions) == []
    assert [type(a) for a in actions] == [RecordEvidence]


@pytest.mark.parametrize(
    "obs",
    [
        BAD,
        replace(GOOD, kl_sum=9000.0),
        replace(GOOD, errors=600),
        replace(GOOD, p99_ms=600.0),
    ],
)
@pytest.mark.parametrize("index", [0, 1, 3])
def test_any_fail_rolls_back_in_the_same_tick(obs: Observation, index: int) -> None:
    s, actions = step(at_step(index), obs, CFG, now=T0 + 1)  # dwell irrelevant for a rollback
    assert (s.phase, s.weight) == (Phase.ROLLED_BACK, 0)
    assert weights_of(actions) == [{"teacher@1": 100, "student@3": 0}]
    assert isinstance(actions[0], SetWeights)  # the weights go first
    (emit,) = events_of(actions)
    assert emit.event.to_phase is Phase.ROLLED_BACK and s.last_reason.startswith("rolled back: ")
    assert any(e.verdict is Verdict.FAIL for e in emit.event.evidence)


def test_fail_rolls_back_even_with_a_broken_clock() -> None:
    s, actions = step(started(), BAD, CFG, now=math.nan)
    assert (s.phase, s.weight) == (Phase.ROLLED_BACK, 0) and weights_of(actions)


def test_last_step_pass_promotes() -> None:
    s, actions = step(at_step(3), GOOD, CFG, now=T0 + 30)
    assert (s.phase, s.weight) == (Phase.PROMOTED, 100)
    assert weights_of(actions) == [{"teacher@1": 0, "student@3": 100}]


def test_failure_limit_debounces() -> None:
    cfg = replace(CFG, failure_limit=2)
    s, actions = step(started(cfg), BAD, cfg, now=T0 + 1)
    assert (s.phase, s.failed, weights_of(actions)) == (Phase.PROGRESSING, 1, [])
    s, _ = step(s, GOOD, cfg, now=T0 + 2)  # a passing tick resets the consecutive count
    assert s.failed == 0
    s, _ = step(s, BAD, cfg, now=T0 + 3)
    s, actions = step(s, BAD, cfg, now=T0 + 4)
    assert (s.phase, s.weight, s.failed) == (Phase.ROLLED_BACK, 0, 2) and weights_of(actions)


def test_could_not_measure_pauses_over_its_limit() -> None:
    s = started()
    for i in range(1, 6):
        s, actions = step(s, None if i % 2 else Observation.could_not_measure("timeout"), CFG, now=T0 + i)
        assert (s.phase, s.could_not_measure, actions) == (Phase.PROGRESSING, i, [])
    s, actions = step(s, Observation.could_not_measure("timeout"), CFG, now=T0 + 6)
    assert s.phase is Phase.PAUSED and s.weight == 5 and weights_of(actions) == []
    assert "could not be read 6 ticks" in s.last_reason and "timeout" in s.last_reason


def test_a_readable_tick_resets_could_not_measure() -> None:
    s, _ = step(started(), None, CFG, now=T0 + 1)
    s, _ = step(s, HOLD, CFG, now=T0 + 2)
    assert s.could_not_measure == 0 and s.inconclusive == 1


def test_inconclusive_limit_pauses() -> None:
    cfg = replace(CFG, inconclusive_limit=2)
    s = started(cfg)
    for i in range(1, 3):
        s, _ = step(s, HOLD, cfg, now=T0 + i)
        assert s.phase is Phase.PROGRESSING
    s, actions = step(s, HOLD, cfg, now=T0 + 3)
    assert s.phase is Phase.PAUSED and "inconclusive 3 ticks" in s.last_reason
    assert weights_of(actions) == [] and events_of(actions)[0].event.to_phase is Phase.PAUSED


def test_unchanged_hold_keeps_the_state_identical() -> None:
    s, _ = step(started(), GOOD, CFG, now=T0 + 5)  # all pass, dwell not met: nothing to persist
    assert s == started()


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.PAUSED, Phase.PROMOTED, Phase.ROLLED_BACK])
@pytest.mark.parametrize("obs", [GOOD, BAD, None])
def test_non_progressing_phases_ignore_ticks(phase: Phase, obs: Observation | None) -> None:
    s = replace(started(), phase=phase)
    assert step(s, obs, CFG, now=T0 + 100) == (s, [])


def test_step_index_outside_the_config_pauses() -> None:
    s, actions = step(replace(started(), step_index=9), GOOD, CFG, now=T0 + 100)
    assert s.phase is Phase.PAUSED and weights_of(actions) == []


def test_full_rollout_with_dwell() -> None:
    s, now, weights = started(), T0, []
    while s.phase is Phase.PROGRESSING:
        now += 10
        s, actions = step(s, GOOD, CFG, now=now)
        weights += [w["student@3"] for w in weights_of(actions)]
    assert s.phase is Phase.PROMOTED and weights == [25, 50, 100, 100] and now == T0 + 120


# --- operator commands ------------------------------------------------------------------------------


def test_pause_resume_restarts_the_step_window() -> None:
    s, actions = pause(started(), now=T0 + 10, reason="looking")
    assert (
        s.phase is Phase.PAUSED
        and weights_of(actions) == []
        and s.last_reason == "paused by operator: looking"
    )
    s, actions = resume(s, now=T0 + 50)
    assert (s.phase, s.step_started_at, s.weight) == (Phase.PROGRESSING, T0 + 50, 5)
    assert weights_of(actions) == [{"teacher@1": 95, "student@3": 5}]
    assert step(s, GOOD, CFG, now=T0 + 60)[0].step_index == 0  # dwell counts from the resume
    assert step(s, GOOD, CFG, now=T0 + 80)[0].step_index == 1


@pytest.mark.parametrize("source", [Phase.PROGRESSING, Phase.PAUSED])
def test_promote_and_abort(source: Phase) -> None:
    s = replace(at_step(1), phase=source)
    p, actions = promote(s, now=T0 + 1)
    assert (p.phase, p.weight, weights_of(actions)) == (
        Phase.PROMOTED,
        100,
        [{"teacher@1": 0, "student@3": 100}],
    )
    a, actions = abort(s, now=T0 + 1, reason="bad")
    assert (a.phase, a.weight, weights_of(actions)) == (
        Phase.ROLLED_BACK,
        0,
        [{"teacher@1": 100, "student@3": 0}],
    )


@pytest.mark.parametrize(
    ("command", "phase"),
    [
        (pause, Phase.PAUSED),
        (pause, Phase.IDLE),
        (resume, Phase.PROGRESSING),
        (resume, Phase.ROLLED_BACK),
        (promote, Phase.PROMOTED),
        (promote, Phase.IDLE),
        (abort, Phase.ROLLED_BACK),
        (abort, Phase.PROMOTED),
    ],
)
def test_invalid_transitions(command: Any, phase: Phase) -> None:
    with pytest.raises(InvalidTransition, match=phase.value):
        command(replace(started(), phase=phase), now=T0)


def test_operator_commands_need_a_real_time() -> None:
    with pytest.raises(InvalidTransition):
        pause(started(), now=math.inf)


@pytest.mark.parametrize("phase", [Phase.PROGRESSING, Phase.PAUSED])
def test_second_active_rollout_is_refused(phase: Phase) -> None:
    with pytest.raises(InvalidTransition, match="already"):
        start("classify", "teacher@1", "student@4", CFG, now=T0, current=replace(started(), phase=phase))


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.PROMOTED, Phase.ROLLED_BACK])
def test_new_rollout_after_a_finished_one(phase: Phase) -> None:
    s, actions = start(
        "classify", "student@3", "student@4", CFG, now=T0, current=replace(started(), phase=phase)
    )
    assert s.phase is Phase.PROGRESSING and events_of(actions)[0].event.from_phase is phase


@pytest.mark.parametrize(
    ("args", "cfg", "field"),
    [
        (("classify", "m@1", "m@1"), CFG, "candidate"),
        (("classify", "", "m@2"), CFG, "baseline"),
        (("", "m@1", "m@2"), CFG, "task"),
        (("classify", "m@1", "m@2"), RolloutConfig(), "offline_disagreement"),
    ],
)
def test_bad_start_input_names_the_field(args: tuple[str, str, str], cfg: RolloutConfig, field: str) -> None:
    with pytest.raises(InvalidRolloutConfig) as info:
        start(*args, cfg, now=T0)
    assert info.value.field == field


# --- properties -------------------------------------------------------------------------------------

weird = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1e5))
arbitrary = st.builds(
    Observation,
    compared=weird,
    disagreed=weird,
    kl_sum=weird,
    requests=weird,
    errors=weird,
    p99_ms=st.one_of(st.none(), weird),
    baseline_p99_ms=st.one_of(st.none(), weird),
    unreadable=st.booleans(),
)


@st.composite
def plausible(draw: st.DrawFn) -> Observation:
    """Mostly healthy observations with at most one metric off, so runs reach advances and promotions."""
    sizes = st.sampled_from([0, 150, 1500, 4000, 4000, 8000])  # hypothesis favours tiny integers
    n, req = draw(sizes), draw(sizes)
    obs = Observation(
        compared=n,
        disagreed=int(n * 0.09),
        kl_sum=n * 0.1,
        requests=req,
        errors=int(req * 0.001),
        p99_ms=100.0,
        baseline_p99_ms=90.0,
    )
    flip = draw(st.sampled_from(["none"] * 24 + ["disagreed", "kl", "errors", "p99", "close", "no-p99"]))
    return {
        "none": obs,
        "disagreed": replace(obs, disagreed=int(n * 0.3)),
        "kl": replace(obs, kl_sum=n * 2.0),
        "errors": replace(obs, errors=int(req * 0.1)),
        "p99": replace(obs, p99_ms=400.0),
        "close": replace(obs, disagreed=int(n * 0.13)),
        "no-p99": replace(obs, p99_ms=None),
    }[flip]


@st.composite
def configs(draw: st.DrawFn) -> RolloutConfig:
    steps = sorted(draw(st.sets(st.integers(1, 99), max_size=4)) | {100})
    return RolloutConfig(
        steps=tuple(steps),
        min_dwell_s=draw(st.sampled_from([0.0, 5.0, 30.0])),
        offline_disagreement=0.11,
        failure_limit=1,
        inconclusive_limit=draw(st.sampled_from([None, None, 8])),
        could_not_measure_limit=draw(st.sampled_from([0, 2, 5])),
        max_p99_ratio_vs_baseline=draw(st.sampled_from([None, 1.5])),
    )


ticks = st.lists(
    st.tuples(
        st.one_of(st.none(), arbitrary, *[plausible()] * 6),
        st.one_of(st.floats(0, 60), st.just(math.nan), st.just(-10.0)),
        st.sampled_from(["tick"] * 8 + ["pause", "resume", "promote", "abort"]),
    ),
    max_size=30,
)


def check_actions(actions: list[Action], state: RolloutState) -> None:
    for w in weights_of(actions):
        assert sum(w.values()) == 100 and all(0 <= v <= 100 for v in w.values())
        assert w[state.candidate] == state.weight


@settings(max_examples=250, deadline=None)
@given(cfg=configs(), script=ticks)
def test_step_properties(cfg: RolloutConfig, script: list[tuple[Observation | None, float, str]]) -> None:
    state, now = start("classify", "teacher@1", "student@3", cfg, now=0.0)[0], 0.0
    for obs, dt, command in script:
        now = now + dt if math.isfinite(dt) else now
        clock = now if math.isfinite(dt) else dt  # sometimes hand step() a NaN or a time in the past
        before = state
        if command != "tick":
            fn = {"pause": pause, "resume": resume, "promote": promote, "abort": abort}[command]
            try:
                state, actions = fn(state, now=now)
            except InvalidTransition:
                assert state == before
                continue
            check_actions(actions, state)
            continue
        state, actions = step(state, obs, cfg, now=clock)  # must never raise
        assert 0 <= state.weight <= 100
        check_actions(actions, state)
        assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
        if before.phase is not Phase.PROGRESSING:
            assert (state, actions) == (before, [])  # paused, idle and terminal phases stay
            continue
        verdicts = set() if obs is None or obs.unreadable else {e.verdict for e in judge(obs, cfg)}
        if verdicts != {Verdict.PASS}:  # never advance or promote on a failing or inconclusive check
            assert state.step_index == before.step_index and state.phase is not Phase.PROMOTED
            assert state.weight in (before.weight, 0)
        if Verdict.FAIL in verdicts:  # failure_limit=1: a fail always ends at weight 0
            assert (state.phase, state.weight) == (Phase.ROLLED_BACK, 0)
            assert weights_of(actions) == [{"teacher@1": 100, "student@3": 0}]
        if state.phase is Phase.PROMOTED:
            assert state.weight == 100 and before.step_index == len(cfg.steps) - 1
        if state.step_index > before.step_index:
            assert state.step_index == before.step_index + 1 and state.weight == cfg.steps[state.step_index]


@settings(max_examples=300, deadline=None)
@given(
    obs=st.one_of(st.none(), arbitrary),
    now=st.floats(allow_nan=True, allow_infinity=True),
    index=st.integers(-3, 8),
    weight=st.integers(0, 100),
    started_at=st.floats(allow_nan=True, allow_infinity=True),
)
def test_step_is_total(
    obs: Observation | None, now: float, index: int, weight: int, started_at: float
) -> None:
    # Even a state inconsistent with its config, a broken clock and garbage metrics do not raise.
    s = replace(started(), step_index=index, weight=weight, step_started_at=started_at)
    new, actions = step(s, obs, CFG, now=now)
    assert 0 <= new.weight <= 100
    for w in weights_of(actions):
        assert sum(w.values()) == 100
