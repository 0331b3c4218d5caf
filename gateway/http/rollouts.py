"""Operator endpoints for progressive rollouts (bearer token) and the audit log."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from distill.registry import Manifest
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.http.admin import require_admin
from gateway.serving.pool import SERVED_TASKS
from gateway.state import GatewayState
from rollout.driver import NoRollout
from rollout.machine import InvalidTransition
from rollout.model import InvalidRolloutConfig, RolloutConfig

router = APIRouter(prefix="/admin", tags=["rollout"], dependencies=[Depends(require_admin)])


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


class RolloutCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def _current_baseline(state: GatewayState, task: str) -> str:
    weights = state.traffic.get(task)
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
    if candidate.task == "generate":
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


@router.post("/rollouts", status_code=201)
async def start_rollout(body: RolloutStart, request: Request) -> dict[str, Any]:
    """Start moving traffic of `task` from its baseline to `candidate`, step by step, judged as it goes."""
    state = _state(request)
    controller = state.controller
    if body.task not in SERVED_TASKS:
        raise InvalidInput(f"unknown task {body.task!r}; served: {list(SERVED_TASKS)}", field="task")
    candidate = state.pool.manifest_of(body.candidate)
    if candidate is None:
        raise InvalidInput(f"no loaded model {body.candidate!r}", field="candidate")
    if candidate.task != body.task:
        raise InvalidInput(f"{body.candidate!r} serves task {candidate.task!r}", field="candidate")
    baseline = body.baseline or _current_baseline(state, body.task)
    if state.pool.tasks_of().get(baseline) != body.task:
        raise InvalidInput(f"no loaded {body.task} model {baseline!r}", field="baseline")
    config = build_config(body, candidate)
    try:
        rollout = controller.start(body.task, baseline, body.candidate, config)
    except InvalidTransition as exc:
        raise Conflict(str(exc), field="task") from exc
    except InvalidRolloutConfig as exc:
        raise InvalidInput(str(exc), field=exc.field) from exc
    return {"state": rollout.to_dict(), "config": config.to_dict()}


@router.get("/rollouts/{task}")
async def get_rollout(task: str, request: Request) -> dict[str, Any]:
    """State, config and the judge's latest evidence per guarded metric."""
    controller = _state(request).controller
    try:
        rollout, config = controller.state(task)
    except NoRollout as exc:
        raise NotFound(str(exc), field="task") from exc
    evidence = [asdict(e) | {"verdict": e.verdict.value} for e in controller.last_evidence.get(task, ())]
    return {"state": rollout.to_dict(), "config": config.to_dict(), "evidence": evidence}


@router.post("/rollouts/{task}/{command}")
async def command_rollout(
    task: str,
    command: Literal["pause", "resume", "promote", "abort"],
    request: Request,
    body: RolloutCommand | None = None,
) -> dict[str, Any]:
    controller = _state(request).controller
    try:
        rollout = controller.command(task, command, reason=body.reason if body else "")
    except NoRollout as exc:
        raise NotFound(str(exc), field="task") from exc
    except InvalidTransition as exc:
        raise Conflict(str(exc), field="command") from exc
    return {"state": rollout.to_dict()}


@router.get("/events")
async def events(
    request: Request,
    task: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """The audit log: every rollout transition (time, actor, from → to, weights, evidence)."""
    return {"events": _state(request).controller.audit.read(task=task, limit=limit)}
