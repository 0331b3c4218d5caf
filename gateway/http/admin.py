"""Operator endpoints (bearer token): models, traffic split, shadow rates."""

from __future__ import annotations

import asyncio
import hmac
import os

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from distill.build_status import read_status
from distill.registry import RegistryError
from gateway.errors import Conflict, Forbidden, ModelUnavailable, Unauthorized
from gateway.http.schemas import ShadowHold, ShadowRatesUpdate, TrafficUpdate
from gateway.serving.traffic import validate_weights
from gateway.shadow.protection import HOLD_TTL_S
from gateway.shadow.rates import validate_rates
from gateway.state import GatewayState
from rollout.model import Phase

_bearer = HTTPBearer(auto_error=False)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def require_admin(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    if credentials is None:
        raise Unauthorized(
            "admin endpoints need 'Authorization: Bearer <token>' (see <state_dir>/admin.token)"
        )
    if not hmac.compare_digest(credentials.credentials.encode(), _state(request).admin_token.encode()):
        raise Forbidden("wrong admin token")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/process")
async def process(request: Request) -> dict[str, object]:
    """The gateway process that answered: one of `workers` on the port (`kdgate serve --workers N`);
    whether it held the controller lease at its last look and whether it shadows."""
    state = _state(request)
    shadow = state.shadow
    return {
        "pid": os.getpid(),
        "workers": state.settings.workers,
        "controller": state.controller.leading,
        "shadow": shadow is not None and not shadow.standby,
    }


@router.get("/models")
async def list_models(request: Request) -> dict[str, object]:
    """Every registered model, with whether it is loaded and its current weight."""
    state = _state(request)
    loaded = state.pool.tasks_of()
    rows = []
    for manifest in state.registry.list():
        weights = state.traffic.get(manifest.task)
        rows.append(
            {
                "ref": manifest.ref,
                "task": manifest.task,
                "role": manifest.role,
                "kind": manifest.kind,
                "format": manifest.format,
                "loaded": manifest.ref in loaded,
                "weight": weights.get(manifest.ref, 0),
                "metrics": manifest.metrics,
            }
        )
    return {"models": rows}


@router.post("/models/reload")
async def reload_models(request: Request) -> dict[str, object]:
    """Load models registered since the start (e.g. by `kdgate distill`) without a restart, here and, by
    word through the state store, on every gateway that shares it (within a few seconds)."""
    state = _state(request)
    before = set(state.pool.tasks_of())
    try:
        await asyncio.to_thread(state.load_models)
    except RegistryError as exc:  # the others are loaded; the models that serve keep serving
        failure: RegistryError | None = exc
    else:
        failure = None
    await asyncio.to_thread(state.registry_news.announce)  # the other gateways load what they can too
    if failure is not None:
        raise ModelUnavailable(f"not loaded: {failure}") from failure
    return {"loaded": sorted(set(state.pool.tasks_of()) - before)}


@router.get("/build")
async def build_status(request: Request) -> dict[str, object]:
    """The background build of missing default models: each step's state, times and registered ref."""
    state = _state(request)
    status = read_status(state.settings.state_dir)
    return {"running": bool(state.building), **status.model_dump(mode="json")}


@router.get("/traffic")
async def get_traffic(request: Request) -> dict[str, object]:
    return {"traffic": _state(request).traffic.all()}


@router.put("/traffic/{task}")
async def set_traffic(
    task: str, update: TrafficUpdate, request: Request, force: bool = False
) -> dict[str, object]:
    """Replaces the split of `task`.

    Body: `{"weights": {"classify-student@1": 25, "classify-teacher@1": 75}}`. Refused (409) while a
    rollout of the task is progressing, unless it is paused or `?force=true` is given.
    """
    state = _state(request)
    await asyncio.to_thread(state.load_named, update.weights)
    state.served_task(task)
    weights = validate_weights(task, update.weights, state.pool.tasks_of())
    rollout = state.store.rollouts.load(task)
    if rollout is not None and rollout[0].phase is Phase.PROGRESSING and not force:
        raise Conflict(
            f"a rollout of {task!r} is progressing ({rollout[0].candidate} at {rollout[0].weight}%); "
            "pause it first or pass force=true",
            field="task",
        )
    state.traffic.set(task, weights)
    state.metrics.set_weights(task, weights, [r for r, t in state.pool.tasks_of().items() if t == task])
    return {"task": task, "weights": weights}


def _students_of(state: GatewayState) -> dict[str, str]:
    """Loaded models that are not their task's teacher (what the shadow scores), ref -> task."""
    pool = state.pool
    return {ref: task for ref, task in pool.tasks_of().items() if ref != pool.teacher_ref(task)}


@router.get("/shadow")
async def get_shadow(request: Request) -> dict[str, object]:
    """Per loaded student: the shadow rate in force (and whether an operator set it), and what the
    shadow did over the live window: requests it could have scored, scored, dropped."""
    state = _state(request)
    overrides = state.shadow_rates.overrides()
    rows = []
    for ref, task in sorted(_students_of(state).items()):
        totals = state.window.totals(ref)
        rows.append(
            {
                "ref": ref,
                "task": task,
                "rate": state.shadow_rates.rate(ref),
                "source": "operator" if ref in overrides else "settings",
                "eligible": totals.eligible,
                "compared": totals.compared,
                "dropped": totals.dropped,
            }
        )
    holds = state.shadow_protection.holds()
    return {"enabled": state.shadow is not None, "models": rows, "holds": holds}


@router.put("/shadow/{task}")
async def set_shadow(task: str, update: ShadowRatesUpdate, request: Request) -> dict[str, object]:
    """Sets the shadow rate of students of `task` at run time (kept across restarts).

    Body: `{"rates": {"classify-student@2": 0.25}}`; `null` drops the override, back to the configured
    rate (`shadow_rates`, else `shadow_rate`).
    """
    state = _state(request)
    state.served_task(task)
    changes = validate_rates(task, update.rates, _students_of(state))
    await asyncio.to_thread(state.shadow_rates.update, changes)  # an fsync: not on the event loop
    rates = state.shadow_rates
    return {"task": task, "rates": {ref: rates.rate(ref) for ref in changes}, "overrides": rates.overrides()}


@router.put("/shadow/holds/{holder}")
async def hold_shadow(holder: str, hold: ShadowHold, request: Request) -> dict[str, object]:
    """Keeps the shadow log's segments from `since` on out of every replica's retention while a run
    started elsewhere (`kdgate distill watch`) reads them; holding again replaces the holder's hold."""
    protection = _state(request).shadow_protection
    await asyncio.to_thread(protection.hold, holder, hold.since, hold.ttl_s or HOLD_TTL_S)
    return {"holds": protection.holds()}


@router.delete("/shadow/holds/{holder}")
async def release_shadow(holder: str, request: Request) -> dict[str, object]:
    """Ends `holder`'s hold on the shadow log (a no-op when it holds none)."""
    protection = _state(request).shadow_protection
    await asyncio.to_thread(protection.release, holder)
    return {"holds": protection.holds()}
