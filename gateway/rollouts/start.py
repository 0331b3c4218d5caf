"""Starting a rollout on this gateway: the one path the admin API and the continual loop both take.

The candidate's config comes from its task's defaults, its offline figures (manifest metrics), then
what the operator gave; the baseline defaults to the model with the task's largest weight.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distill.registry import Manifest, TaskKind
from gateway.errors import Conflict, InvalidInput
from gateway.serving.pool import ModelPool
from gateway.serving.traffic import TrafficStore
from rollout import machine
from rollout.driver import Controller
from rollout.machine import InvalidTransition
from rollout.model import InvalidRolloutConfig, RolloutConfig, RolloutState


class RolloutStart(BaseModel):
    """Start a rollout of `candidate`; every threshold not given takes its default (rollout/model.py)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(examples=["classify"])
    candidate: str = Field(examples=["classify-student@2"])
    baseline: str | None = None  # default: the model serving the task now (its largest weight)
    steps: list[int] | None = Field(None, examples=[[5, 25, 50, 100]])
    min_dwell_s: float | None = None
    min_samples: int | None = None
    min_requests: int | None = None
    max_disagreement: float | None = None  # absolute; default: offline disagreement + margin
    disagreement_margin: float | None = None
    max_kl: float | None = None
    error_budget: float | None = None
    max_burn_rate: float | None = None
    max_degenerate_rate: float | None = None
    p99_slo_ms: float | None = None
    max_p99_ratio_vs_baseline: float | None = None
    could_not_measure_limit: int | None = None
    alpha: float | None = None


def current_baseline(traffic: TrafficStore, task: str) -> str:
    weights = traffic.get(task)
    if not weights:
        raise InvalidInput(f"task {task!r} has no traffic split; give 'baseline'", field="baseline")
    return max(sorted(weights), key=lambda ref: weights[ref])


# /generate rollouts: proxies count tokens and the latency guard reads time per output token.
GENERATE_DEFAULTS: dict[str, Any] = {
    "p99_slo_ms": 150.0,  # p99 time per output token; a small student decodes in ~10-20 ms, the teacher ~60
    "min_samples": 2000,  # compared tokens per step (~30-60 completions)
    "disagreement_margin": 0.05,  # per-token agreement is noisier than per-text, and tokens correlate
    "max_degenerate_rate": 0.1,  # repetition loops among shadowed completions
    # Per-token KL of a 4-layer student against its 30-layer teacher passes 10 nats on hard tokens
    # (classify's cap); the guard's bound needs the cap above any threshold it checks.
    "kl_cap": 20.0,
}
GENERATE_KL_SLACK = 1.5  # max KL per token = offline KL x this, when the manifest has one
GENERATE_MAX_KL = 3.0  # nats per token otherwise


def build_config(body: RolloutStart, candidate: Manifest) -> RolloutConfig:
    """The candidate's config: task defaults, its offline figures, then what the operator gave."""
    offline = _number(candidate.metrics.get("disagreement"))
    defaults: dict[str, Any] = {}
    if candidate.task_kind is TaskKind.GENERATE:
        # Offline figures are per token on held-out teacher completions (distill/generate/build.py).
        defaults = dict(GENERATE_DEFAULTS)
        agreement = _number(candidate.metrics.get("heldout_agreement"))
        offline = None if agreement is None else round(1.0 - agreement, 4)
        kl = _number(candidate.metrics.get("heldout_kl"))
        derived = GENERATE_MAX_KL if kl is None else round(kl * GENERATE_KL_SLACK, 4)
        defaults["max_kl"] = min(derived, 0.95 * defaults["kl_cap"])
    given = body.model_dump(exclude_none=True, exclude={"task", "candidate", "baseline"})
    if "steps" in given:
        given["steps"] = tuple(given["steps"])
    try:
        return RolloutConfig(offline_disagreement=offline, **(defaults | given))
    except InvalidRolloutConfig as exc:
        raise InvalidInput(str(exc), field=exc.field) from exc


def _number(x: object) -> float | None:
    """A manifest figure as a float, or None when it is missing or not a number."""
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def start_rollout(
    body: RolloutStart,
    pool: ModelPool,
    traffic: TrafficStore,
    controller: Controller,
    actor: str = machine.OPERATOR,
) -> tuple[RolloutState, RolloutConfig]:
    """Validates `body` against the loaded models and starts the rollout; InvalidInput or Conflict."""
    if body.task not in pool.tasks():
        raise InvalidInput(
            f"unknown task {body.task!r}; served: {', '.join(sorted(pool.tasks()))}", field="task"
        )
    candidate = pool.manifest_of(body.candidate)
    if candidate is None:
        raise InvalidInput(f"no loaded model {body.candidate!r}", field="candidate")
    if candidate.task != body.task:
        raise InvalidInput(f"{body.candidate!r} serves task {candidate.task!r}", field="candidate")
    baseline = body.baseline or current_baseline(traffic, body.task)
    if pool.tasks_of().get(baseline) != body.task:
        raise InvalidInput(f"no loaded {body.task} model {baseline!r}", field="baseline")
    config = build_config(body, candidate)
    try:
        rollout = controller.start(body.task, baseline, body.candidate, config, actor)
    except InvalidTransition as exc:
        raise Conflict(str(exc), field="task") from exc
    except InvalidRolloutConfig as exc:
        raise InvalidInput(str(exc), field=exc.field) from exc
    return rollout, config
