"""Data of a progressive rollout: configuration, persisted state, observations, verdicts, actions.

Everything here is plain data (frozen dataclasses and enums) with JSON round-trips; the decisions live
in `rollout.judge` (metric → verdict) and `rollout.machine` (state × observation → state, actions).

Example:
    >>> cfg = RolloutConfig(offline_disagreement=0.11)
    >>> cfg.disagreement_max
    0.14
    >>> RolloutConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class InvalidRolloutConfig(ValueError):
    """A rollout configuration value is out of range; `field` names the offending setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CorruptState(ValueError):
    """A persisted rollout state could not be read back (missing key, wrong type, unknown phase)."""


class Phase(enum.StrEnum):
    IDLE = "idle"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)

    @property
    def active(self) -> bool:
        # An active rollout owns the task's traffic weights: a second one must be refused.
        return self in (Phase.PROGRESSING, Phase.PAUSED)


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class RolloutConfig:
    """Schedule and guard thresholds of one rollout. Validated on construction."""

    # Candidate weight (%) at each step. 5% first: a broken student hurts few users before it is caught.
    steps: tuple[int, ...] = (5, 25, 50, 100)
    # Time at each step before advancing, even when the evidence is already clear: some faults
    # (memory growth, cache effects) need wall time, not samples, to show.
    min_dwell_s: float = 30.0
    # Compared shadow samples (candidate vs teacher) per step before advancing.
    min_samples: int = 200
    # Candidate requests before its p99 is compared or its error rate may pass: a p99 over 20 requests
    # is roughly their maximum and says little.
    min_requests: int = 100
    # Disagreement the candidate showed offline at registration (its manifest). The guard is this plus
    # the margin, so a student that disagreed 11% offline is not rolled back for 11% live.
    offline_disagreement: float | None = None
    disagreement_margin: float = 0.03
    # Absolute maximum; overrides offline + margin when set (per-rollout override).
    max_disagreement: float | None = None
    # Maximum mean KL(teacher ‖ candidate) in nats; None disables the guard.
    max_kl: float | None = 0.5
    # Per-sample KL is unbounded; the bound treats each sample as clipped to this cap (see judge.py).
    kl_cap: float = 10.0
    # Error budget (errors + fallbacks per request) and the burn rate (rate / budget) that fails.
    # Burn 2 ≈ "twice the budget": tolerant of a noisy but healthy candidate, quick on a broken one.
    error_budget: float = 0.01
    max_burn_rate: float = 2.0
    # /generate: maximum share of shadowed completions that are repetition loops; None disables it.
    # Agreement alone rewards a looping student (the teacher copies the loop), so this is its own guard.
    max_degenerate_rate: float | None = None
    # Candidate p99 latency SLO in ms, and optionally a maximum ratio to the baseline's p99.
    p99_slo_ms: float = 250.0
    max_p99_ratio_vs_baseline: float | None = None
    # Consecutive failing ticks that trigger a rollback. 1: the bounds are already anytime-valid, so a
    # single failing look is real evidence; more only delays the rollback.
    failure_limit: int = 1
    # Consecutive inconclusive ticks before pausing; None holds forever (never promotes on no data).
    inconclusive_limit: int | None = None
    # Consecutive ticks whose metric source could not be read before pausing.
    could_not_measure_limit: int = 5
    # Chance of a false rollback over the whole rollout, split over guards and steps (see judge.py).
    alpha: float = 0.05

    def __post_init__(self) -> None:
        # Accept lists (JSON) but store a tuple so the config stays hashable and immutable.
        object.__setattr__(self, "steps", tuple(self.steps))
        self._validate()

    @property
    def disagreement_max(self) -> float | None:
        """The disagreement threshold in force: the absolute maximum, else offline + margin."""
        if self.max_disagreement is not None:
            return self.max_disagreement
        if self.offline_disagreement is not None:
            return round(self.offline_disagreement + self.disagreement_margin, 12)
        return None

    def _validate(self) -> None:
        steps = self.steps
        if not steps or not all(_is_int(s) for s in steps):
            raise InvalidRolloutConfig("steps", f"must be a non-empty list of integers, got {list(steps)}")
        if any(not 0 < s <= 100 for s in steps):
            raise InvalidRolloutConfig("steps", f"each step must be in (0, 100], got {list(steps)}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise InvalidRolloutConfig("steps", f"must be strictly increasing, got {list(steps)}")
        if steps[-1] != 100:
            raise InvalidRolloutConfig("steps", f"must end at 100, got {list(steps)}")
        self._check("min_dwell_s", self.min_dwell_s, 0.0, math.inf, lo_open=False)
        for name in ("min_samples", "min_requests", "could_not_measure_limit"):
            self._check_int(name, getattr(self, name), 0)
        self._check_int("failure_limit", self.failure_limit, 1)
        if self.inconclusive_limit is not None:
            self._check_int("inconclusive_limit", self.inconclusive_limit, 1)
        offline = self.offline_disagreement
        if offline is not None and not (_finite(offline) and 0.0 <= offline <= 1.0):
            # A measurement, not a guard: a student that disagreed on every held-out token measured 1.0;
            # with an absolute max_disagreement its rollout is still judged.
            raise InvalidRolloutConfig("offline_disagreement", f"must be in [0.0, 1.0], got {offline!r}")
        self._check("disagreement_margin", self.disagreement_margin, 0.0, 1.0, lo_open=False)
        if self.max_disagreement is not None:
            self._check("max_disagreement", self.max_disagreement, 0.0, 1.0)
        elif self.offline_disagreement is not None and not (
            self.offline_disagreement + self.disagreement_margin < 1.0
        ):
            raise InvalidRolloutConfig("disagreement_margin", "offline_disagreement + margin must be < 1")
        self._check("kl_cap", self.kl_cap, 0.0, math.inf)
        if self.max_kl is not None:
            self._check("max_kl", self.max_kl, 0.0, self.kl_cap)
        self._check("error_budget", self.error_budget, 0.0, 1.0)
        self._check("max_burn_rate", self.max_burn_rate, 0.0, math.inf)
        if not self.error_budget * self.max_burn_rate < 1.0:
            raise InvalidRolloutConfig("max_burn_rate", "error_budget * max_burn_rate must be < 1")
        self._check("p99_slo_ms", self.p99_slo_ms, 0.0, math.inf)
        if self.max_degenerate_rate is not None:
            self._check("max_degenerate_rate", self.max_degenerate_rate, 0.0, 1.0)
        if self.max_p99_ratio_vs_baseline is not None:
            self._check("max_p99_ratio_vs_baseline", self.max_p99_ratio_vs_baseline, 0.0, math.inf)
        self._check("alpha", self.alpha, 0.0, 1.0)

    @staticmethod
    def _check(name: str, value: object, lo: float, hi: float, lo_open: bool = True) -> None:
        # Intervals are (lo, hi) or [lo, hi); the upper end is always open: 100% disagreement or an
        # infinite SLO is no guard at all.
        if not _finite(value):
            raise InvalidRolloutConfig(name, f"must be a finite number, got {value!r}")
        assert isinstance(value, int | float)
        if not ((lo < value if lo_open else lo <= value) and value < hi):
            left = "(" if lo_open else "["
            raise InvalidRolloutConfig(name, f"must be in {left}{lo}, {hi}), got {value!r}")

    @staticmethod
    def _check_int(name: str, value: object, lo: int) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= lo):
            raise InvalidRolloutConfig(name, f"must be an integer >= {lo}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutConfig:
        """Build from JSON/operator input; an unknown key is refused by name, missing keys default."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidRolloutConfig(key, "unknown setting")
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. steps given as a number
            raise InvalidRolloutConfig("config", str(exc)) from exc


@dataclass(frozen=True)
class RolloutState:
    """Persisted state of one task's rollout; a restart resumes exactly from it."""

    phase: Phase
    task: str
    baseline: str  # model ref, e.g. "classify-teacher@1"
    candidate: str  # model ref, e.g. "classify-student@3"
    step_index: int
    weight: int  # candidate weight (%) now in force; the baseline has 100 - weight
    step_started_at: float  # when the current step (or the resumed step) started: dwell is measured from it
    failed: int = 0  # consecutive ticks with a failing guard
    inconclusive: int = 0  # consecutive ticks with no failure but some guard inconclusive
    could_not_measure: int = 0  # consecutive ticks whose metric source could not be read
    last_reason: str = ""  # why the last transition happened
    updated_at: float = 0.0

    @classmethod
    def idle(cls, task: str, now: float = 0.0) -> RolloutState:
        return cls(Phase.IDLE, task, "", "", 0, 0, now, updated_at=now)

    def weights(self) -> dict[str, int]:
        """Traffic weights of the task implied by this state, keyed by model ref; they sum to 100."""
        return {self.baseline: 100 - self.weight, self.candidate: self.weight}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phase"] = self.phase.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        try:
            kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            kw["phase"] = Phase(data["phase"])
            state = cls(**kw)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptState(f"unreadable rollout state: {exc!r}") from exc
        # Check types here so that step() can trust its state and stay total.
        for name in ("step_index", "weight", "failed", "inconclusive", "could_not_measure"):
            if not _is_int(getattr(state, name)):
                raise CorruptState(f"unreadable rollout state: {name} must be an integer")
        for name in ("step_started_at", "updated_at"):
            if not _finite(getattr(state, name)):
                raise CorruptState(f"unreadable rollout state: {name} must be a finite time")
        for name in ("task", "baseline", "candidate", "last_reason"):
            if not isinstance(getattr(state, name), str):
                raise CorruptState(f"unreadable rollout state: {name} must be a string")
        if not 0 <= state.weight <= 100:
            raise CorruptState(f"unreadable rollout state: weight {state.weight} outside 0..100")
        return state


@dataclass(frozen=True)
class Observation:
    """What a metric source saw for the candidate since the current step started (cumulative).

    `unreadable` is set when the source could not be queried at all (a "could not measure"); a source
    that answered with nothing gives zero counts and None latencies instead (no data → inconclusive).
    """

    # Counts are floats: Prometheus increase() extrapolates to non-integers; the judge takes both.
    compared: float = 0  # shadow samples compared with the teacher
    disagreed: float = 0  # of which the candidate's answer differed from the teacher's
    kl_sum: float = 0.0  # sum of per-sample KL(teacher ‖ candidate), nats, ideally clipped at kl_cap
    requests: float = 0  # requests the candidate served
    errors: float = 0  # errors + fallbacks among them
    completions: float = 0  # /generate: shadowed completions
    degenerate: float = 0  # of which repetition loops
    p99_ms: float | None = None
    baseline_p99_ms: float | None = None
    unreadable: bool = False
    detail: str = ""  # why it was unreadable, for the audit log

    @classmethod
    def could_not_measure(cls, detail: str) -> Observation:
        return cls(unreadable=True, detail=detail)


@dataclass(frozen=True)
class Evidence:
    """One guarded metric's verdict with what it rests on (exported as kdgate_judge_bound)."""

    metric: str  # "disagreement" | "kl" | "error_burn" | "p99_ms" | "p99_ratio"
    verdict: Verdict
    estimate: float | None
    lower: float | None
    upper: float | None
    n: int
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        return cls(**{**data, "verdict": Verdict(data["verdict"])})


@dataclass(frozen=True)
class Event:
    """A transition, for the audit log: who, from → to, the weights it set, and why."""

    task: str
    at: float
    actor: str  # "judge" | "operator"
    from_phase: Phase
    to_phase: Phase
    step_index: int
    weights: dict[str, int]
    reason: str
    evidence: tuple[Evidence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "at": self.at,
            "actor": self.actor,
            "from_phase": self.from_phase.value,
            "to_phase": self.to_phase.value,
            "step_index": self.step_index,
            "weights": dict(self.weights),
            "reason": self.reason,
            "evidence": [e.to_dict() for e in self.evidence],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            task=data["task"],
            at=data["at"],
            actor=data["actor"],
            from_phase=Phase(data["from_phase"]),
            to_phase=Phase(data["to_phase"]),
            step_index=data["step_index"],
            weights=dict(data["weights"]),
            reason=data["reason"],
            evidence=tuple(Evidence.from_dict(e) for e in data["evidence"]),
        )


@dataclass(frozen=True)
class SetWeights:
    """Apply these traffic weights (model ref → %, summing to 100) to the task's router."""

    task: str
    weights: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Emit:
    """Append this transition to the audit log and count it in kdgate_rollout_transitions_total."""

    event: Event


@dataclass(frozen=True)
class RecordEvidence:
    """The judge's evidence of this tick: export as kdgate_judge_bound and show in status/watch."""

    task: str
    evidence: tuple[Evidence, ...]


Action = SetWeights | Emit | RecordEvidence
