"""Operator endpoints for progressive rollouts (bearer token) and the audit log."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import Conflict, NotFound
from gateway.http.admin import require_admin
from gateway.rollouts import start as rollouts
from gateway.rollouts.start import RolloutStart
from gateway.state import GatewayState
from rollout.driver import NoRollout
from rollout.machine import InvalidTransition

router = APIRouter(prefix="/admin", tags=["rollout"], dependencies=[Depends(require_admin)])


class RolloutCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


@router.post("/rollouts", status_code=201)
async def start_rollout(body: RolloutStart, request: Request) -> dict[str, Any]:
    """Start moving traffic of `task` from its baseline to `candidate`, step by step, judged as it goes."""
    state = _state(request)
    await asyncio.to_thread(state.load_named, [body.candidate, *filter(None, [body.baseline])])
    rollout, config = rollouts.start_rollout(body, state.pool, state.traffic, state.controller)
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
    leader = None if controller.lease is None else controller.lease.holder()  # who drives it
    return {
        "state": rollout.to_dict(),
        "config": config.to_dict(),
        "evidence": evidence,
        "controller": leader,
    }


@router.get("/rollouts/{task}/observation")
async def get_observation(task: str, request: Request) -> dict[str, Any]:
    """What the local metric source sees of the candidate since the step started, every process's
    traffic summed (gateway/rollouts/published.py): the figures the judge decides on."""
    controller = _state(request).controller
    try:
        rollout, _ = controller.state(task)
    except NoRollout as exc:
        raise NotFound(str(exc), field="task") from exc
    observation = await asyncio.to_thread(controller.source.observe, rollout)
    return {"task": task, "step_started_at": rollout.step_started_at, "observation": asdict(observation)}


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
    return {"events": _state(request).store.audit.read(task=task, limit=limit)}
