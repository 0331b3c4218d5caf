"""The rollout state machine: `step(state, obs, config, now) -> (state, actions)`, and operator commands.

Pure and total: no clock (time is the `now` argument), no I/O, and `step` never raises. The driver
loop only observes, calls `step`, applies the `SetWeights` actions, persists the state when it changed,
appends `Emit` events to the audit log and exports `RecordEvidence` as metrics.

Phases: idle → progressing ⇄ paused → promoted | rolled_back (terminal: a new rollout starts afresh).

Example:
    >>> from rollout.model import Observation, RolloutConfig
    >>> cfg = RolloutConfig(offline_disagreement=0.11, min_dwell_s=0)
    >>> state, actions = start("classify", "teacher@1", "student@3", cfg, now=0.0)
    >>> actions[0]
    SetWeights(task='classify', weights={'teacher@1': 95, 'student@3': 5})
    >>> bad = Observation(compared=500, disagreed=250, kl_sum=50.0, requests=500, errors=0, p99_ms=80.0)
    >>> state, actions = step(state, bad, cfg, now=1.0)
    >>> state.phase.value, state.weight, actions[0]
    ('rolled_back', 0, SetWeights(task='classify', weights={'teacher@1': 100, 'student@3': 0}))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from rollout.judge import judge
from rollout.model import (
    Action,
    Emit,
    Event,
    Evidence,
    InvalidRolloutConfig,
    Observation,
    Phase,
    RecordEvidence,
    RolloutConfig,
    RolloutState,
    SetWeights,
    Verdict,
)

JUDGE = "judge"
OPERATOR = "operator"


class InvalidTransition(Exception):
    """An operator command that does not apply in the rollout's current phase (maps to HTTP 409)."""


def _transition(
    old: RolloutState,
    new: RolloutState,
    at: float,
    actor: str,
    reason: str,
    evidence: Sequence[Evidence] = (),
    set_weights: bool = True,
) -> tuple[RolloutState, list[Action]]:
    """Record a transition: reason and time on the state, the weights to apply, the audit event."""
    new = replace(new, last_reason=reason, updated_at=at)
    event = Event(
        new.task, at, actor, old.phase, new.phase, new.step_index, new.weights(), reason, tuple(evidence)
    )
    actions: list[Action] = [SetWeights(new.task, new.weights())] if set_weights else []
    actions.append(Emit(event))
    return new, actions


def _hold(old: RolloutState, new: RolloutState, at: float) -> RolloutState:
    # Touch updated_at only when something changed, so the driver can skip writing an unchanged state.
    return replace(new, updated_at=at) if new != old else old


# ---------------------------------------------------------------------------------------------------
# The tick
# ---------------------------------------------------------------------------------------------------


def step(
    state: RolloutState, obs: Observation | None, config: RolloutConfig, now: float
) -> tuple[RolloutState, list[Action]]:
    """Advance a rollout by one tick given what was observed since the current step started.

    `obs` is None (or `obs.unreadable`) when the metric source could not be read. Only a progressing
    rollout changes: a failing guard rolls back in this very tick (candidate weight 0); all guards
    passing with the step's dwell time and sample count met advances, or promotes after the 100% step;
    anything else holds. Never raises.

    >>> from rollout.model import RolloutConfig, RolloutState
    >>> s = RolloutState.idle("classify")
    >>> step(s, None, RolloutConfig(), now=5.0) == (s, [])
    True
    """
    if state.phase is not Phase.PROGRESSING:
        return state, []
    # A broken clock cannot prove dwell time, so it can never advance a step; it can still roll back.
    clock_ok = isinstance(now, int | float) and math.isfinite(now)
    at = float(now) if clock_ok else state.updated_at
    if not 0 <= state.step_index < len(config.steps):
        new = replace(state, phase=Phase.PAUSED)
        reason = f"paused: step index {state.step_index} does not exist in steps {list(config.steps)}"
        return _transition(state, new, at, JUDGE, reason, set_weights=False)

    if obs is None or obs.unreadable:
        return _could_not_measure(state, obs, config, at)

    evidence = judge(obs, config)
    record = RecordEvidence(state.task, tuple(evidence))
    base = replace(state, could_not_measure=0)
    failing = [e for e in evidence if e.verdict is Verdict.FAIL]

    if failing:
        failed = state.failed + 1
        if failed >= config.failure_limit:
            new = replace(base, phase=Phase.ROLLED_BACK, weight=0, failed=failed)
            reason = "rolled back: " + "; ".join(e.message for e in failing)
            new, actions = _transition(state, new, at, JUDGE, reason, evidence)
            return new, [*actions, record]
        return _hold(state, replace(base, failed=failed), at), [record]

    if all(e.verdict is Verdict.PASS for e in evidence):
        base = replace(base, failed=0, inconclusive=0)
        dwell = at - state.step_started_at
        samples_ok = isinstance(obs.compared, int | float) and obs.compared >= config.min_samples
        if clock_ok and dwell >= config.min_dwell_s and samples_ok:
            new, actions = _advance(state, base, config, at, dwell, obs, evidence)
            return new, [*actions, record]
        return _hold(state, base, at), [record]

    inconclusive = state.inconclusive + 1
    base = replace(base, failed=0, inconclusive=inconclusive)
    if config.inconclusive_limit is not None and inconclusive > config.inconclusive_limit:
        why = "; ".join(e.message for e in evidence if e.verdict is Verdict.INCONCLUSIVE)
        reason = f"paused: inconclusive {inconclusive} ticks in a row ({why})"
        new, actions = _transition(
            state, replace(base, phase=Phase.PAUSED), at, JUDGE, reason, evidence, set_weights=False
        )
        return new, [*actions, record]
    return _hold(state, base, at), [record]


def _could_not_measure(
    state: RolloutState, obs: Observation | None, config: RolloutConfig, at: float
) -> tuple[RolloutState, list[Action]]:
    count = state.could_not_measure + 1
    detail = (obs.detail if obs is not None else "") or "no observation"
    new = replace(state, could_not_measure=count)
    if count > config.could_not_measure_limit:
        reason = f"paused: metric source could not be read {count} ticks in a row ({detail})"
        return _transition(state, replace(new, phase=Phase.PAUSED), at, JUDGE, reason, set_weights=False)
    return _hold(state, new, at), []


def _advance(
    old: RolloutState,
    base: RolloutState,
    config: RolloutConfig,
    at: float,
    dwell: float,
    obs: Observation,
    evidence: Sequence[Evidence],
) -> tuple[RolloutState, list[Action]]:
    done = f"all guards pass after {dwell:.0f} s and {obs.compared} compared samples at {old.weight}%"
    nxt = old.step_index + 1
    if nxt >= len(config.steps):
        new = replace(base, phase=Phase.PROMOTED, weight=100)
        return _transition(old, new, at, JUDGE, f"promoted: {done}", evidence)
    weight = config.steps[nxt]
    # A new step starts a new window: the driver observes from step_started_at, and the judge's
    # confidence sequences restart with it (their alpha is split over steps for that reason).
    new = replace(base, step_index=nxt, weight=weight, step_started_at=at, failed=0, inconclusive=0)
    reason = f"advanced to step {nxt + 1}/{len(config.steps)} ({weight}%): {done}"
    return _transition(old, new, at, JUDGE, reason, evidence)


# ---------------------------------------------------------------------------------------------------
# Operator commands
# ---------------------------------------------------------------------------------------------------


def _require(state: RolloutState, allowed: tuple[Phase, ...], command: str) -> None:
    if state.phase not in allowed:
        names = " or ".join(p.value for p in allowed)
        raise InvalidTransition(
            f"cannot {command} the rollout of {state.task!r}: it is {state.phase.value}, not {names}"
        )


def _require_time(now: float) -> None:
    if not (isinstance(now, int | float) and math.isfinite(now)):
        raise InvalidTransition(f"now must be a finite time, got {now!r}")


def start(
    task: str,
    baseline: str,
    candidate: str,
    config: RolloutConfig,
    now: float,
    current: RolloutState | None = None,
    actor: str = OPERATOR,
) -> tuple[RolloutState, list[Action]]:
    """Start a rollout of `candidate` against `baseline` at the first step's weight.

    `current` is the task's existing state, if any: an active (progressing or paused) rollout refuses
    a second one with InvalidTransition. Bad input raises InvalidRolloutConfig naming the field.

    >>> from rollout.model import RolloutConfig
    >>> s, _ = start("classify", "teacher@1", "student@3", RolloutConfig(max_disagreement=0.2), now=0.0)
    >>> s.phase.value, s.weight, s.weights()
    ('progressing', 5, {'teacher@1': 95, 'student@3': 5})
    """
    if current is not None and current.phase.active:
        raise InvalidTransition(
            f"a rollout of {task!r} is already {current.phase.value} "
            f"({current.baseline} → {current.candidate}); abort or promote it first"
        )
    for name, value in (("task", task), ("baseline", baseline), ("candidate", candidate)):
        if not isinstance(value, str) or not value:
            raise InvalidRolloutConfig(name, f"must be a non-empty string, got {value!r}")
    if candidate == baseline:
        raise InvalidRolloutConfig("candidate", f"{candidate!r} is the baseline itself")
    if config.disagreement_max is None:
        raise InvalidRolloutConfig(
            "offline_disagreement", "needed (from the candidate's manifest) unless max_disagreement is set"
        )
    _require_time(now)
    old = current if current is not None else RolloutState.idle(task, now)
    weight = config.steps[0]
    new = RolloutState(Phase.PROGRESSING, task, baseline, candidate, 0, weight, float(now))
    reason = f"started: {candidate} against {baseline} at {weight}% (steps {list(config.steps)})"
    return _transition(old, new, float(now), actor, reason)


def pause(
    state: RolloutState, now: float, reason: str = "", actor: str = OPERATOR
) -> tuple[RolloutState, list[Action]]:
    """Freeze a progressing rollout at its current weights; ticks change nothing until `resume`.

    >>> from rollout.model import RolloutConfig
    >>> s, _ = start("classify", "t@1", "s@1", RolloutConfig(max_disagreement=0.2), now=0.0)
    >>> pause(s, now=3.0)[0].phase.value
    'paused'
    """
    _require(state, (Phase.PROGRESSING,), "pause")
    _require_time(now)
    text = f"paused by {actor}" + (f": {reason}" if reason else "")
    return _transition(state, replace(state, phase=Phase.PAUSED), float(now), actor, text, set_weights=False)


def resume(
    state: RolloutState, now: float, reason: str = "", actor: str = OPERATOR
) -> tuple[RolloutState, list[Action]]:
    """Resume a paused rollout at the same step, re-asserting its weights.

    The step's window restarts at `now` (dwell, samples and counters from zero): whatever made someone
    pause — an operator's doubt or an unreadable metric source — the evidence for advancing should be
    gathered afterwards.

    >>> from rollout.model import RolloutConfig
    >>> s, _ = start("classify", "t@1", "s@1", RolloutConfig(max_disagreement=0.2), now=0.0)
    >>> s, _ = pause(s, now=3.0)
    >>> s, _ = resume(s, now=9.0)
    >>> s.phase.value, s.step_started_at
    ('progressing', 9.0)
    """
    _require(state, (Phase.PAUSED,), "resume")
    _require_time(now)
    new = replace(
        state,
        phase=Phase.PROGRESSING,
        step_started_at=float(now),
        failed=0,
        inconclusive=0,
        could_not_measure=0,
    )
    text = f"resumed by {actor} at step {state.step_index + 1} ({state.weight}%)" + (
        f": {reason}" if reason else ""
    )
    return _transition(state, new, float(now), actor, text)


def promote(
    state: RolloutState, now: float, reason: str = "", actor: str = OPERATOR
) -> tuple[RolloutState, list[Action]]:
    """Promote the candidate now (weight 100), skipping the remaining steps and guards.

    >>> from rollout.model import RolloutConfig
    >>> s, _ = start("classify", "t@1", "s@1", RolloutConfig(max_disagreement=0.2), now=0.0)
    >>> s, actions = promote(s, now=1.0)
    >>> s.phase.value, actions[0].weights
    ('promoted', {'t@1': 0, 's@1': 100})
    """
    _require(state, (Phase.PROGRESSING, Phase.PAUSED), "promote")
    _require_time(now)
    text = f"promoted by {actor}" + (f": {reason}" if reason else "")
    return _transition(state, replace(state, phase=Phase.PROMOTED, weight=100), float(now), actor, text)


def abort(
    state: RolloutState, now: float, reason: str = "", actor: str = OPERATOR
) -> tuple[RolloutState, list[Action]]:
    """Roll back now: candidate weight 0, baseline 100. The candidate stays loaded for inspection.

    >>> from rollout.model import RolloutConfig
    >>> s, _ = start("classify", "t@1", "s@1", RolloutConfig(max_disagreement=0.2), now=0.0)
    >>> s, actions = abort(s, now=1.0, reason="wrong labels")
    >>> s.phase.value, actions[0].weights, s.last_reason
    ('rolled_back', {'t@1': 100, 's@1': 0}, 'aborted by operator: wrong labels')
    """
    _require(state, (Phase.PROGRESSING, Phase.PAUSED), "abort")
    _require_time(now)
    text = f"aborted by {actor}" + (f": {reason}" if reason else "")
    return _transition(state, replace(state, phase=Phase.ROLLED_BACK, weight=0), float(now), actor, text)
