"""POST /classify, and the one classify request path every protocol route shares (`classify_texts`):
validate, route, run on the micro-batcher, fall back to the teacher on failure, account, offer to shadow."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request, Response

from distill.registry import TaskKind
from gateway.errors import InvalidInput, ModelUnavailable, NotReady, Overloaded
from gateway.http.auth import ApiKeyRoute
from gateway.http.body import header, new_request_id, openapi, read_json_body
from gateway.http.schemas import ClassifyRequest, ClassifyResponse, Prediction
from gateway.serving.batcher import Batched
from gateway.serving.pool import LoadedModel
from gateway.shadow.classify import ShadowItem
from gateway.state import GatewayState

log = logging.getLogger("kdgate.inference")
router = APIRouter(route_class=ApiKeyRoute)
TASK = "classify"


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def check_limits(texts: list[str], state: GatewayState, field: str = "texts") -> None:
    """Size limits (settings). Errors name `field`, its element `field[i]`, or `text` when it is alone."""
    settings = state.settings
    if not texts:
        raise InvalidInput(f"'{field}' must hold at least one text", field=field)
    if len(texts) > settings.max_texts:
        raise InvalidInput(f"at most {settings.max_texts} texts per request, got {len(texts)}", field=field)
    for i, text in enumerate(texts):
        where = "text" if len(texts) == 1 else f"{field}[{i}]"
        if not text.strip():
            raise InvalidInput("text must not be empty", field=where)
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"text longer than {settings.max_text_chars} characters ({len(text)})", field=where
            )


def choose(state: GatewayState, task: str, key: str, pinned: str | None, teacher: LoadedModel) -> LoadedModel:
    models = state.pool.models
    if pinned is not None:
        model = models.get(pinned)
        if model is None or model.manifest.task != task:
            raise InvalidInput(f"no loaded {task} model {pinned!r}", field="x-kdgate-model")
        return model
    return state.routed(task, key, models, teacher)


async def run_with_fallback(
    state: GatewayState, task: str, chosen: LoadedModel, teacher: LoadedModel, texts: list[str]
) -> tuple[LoadedModel, Batched]:
    if chosen is teacher:
        return teacher, await teacher.batcher.submit_timed(texts)
    timeout = state.settings.student_timeout_ms / 1000.0
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for wraps the call in a task of its own, two more
        # turns of the event loop on every student request.
        async with asyncio.timeout(timeout):
            return chosen, await chosen.batcher.submit_timed(texts)
    except TimeoutError:
        reason = "timeout"
    except Exception:
        log.warning("student %s failed; the teacher answers", chosen.ref, exc_info=True)
        reason = "error"
    state.metrics.fallbacks.labels(task, chosen.ref, reason).inc()
    return teacher, await teacher.batcher.submit_timed(texts)


HEADERS = {
    "x-kdgate-key": "Routing key: one key stays on one model while the traffic split holds.",
    "x-kdgate-model": "Pin a loaded model of the task (operators, debugging).",
    "x-request-id": "Request id to echo and log (default: a new one).",
}


@dataclass(frozen=True)
class Classified:
    """What the one classify request path produced: the model routed to, the model that answered (the
    teacher after a fallback), its batch's timing and the probabilities it serves."""

    chosen: LoadedModel
    served: LoadedModel
    batched: Batched

    @property
    def probabilities(self) -> np.ndarray:
        """(N, C), in the order of `served.manifest.labels`."""
        return self.batched.probabilities

    @property
    def fell_back(self) -> bool:
        return self.served is not self.chosen


async def classify_texts(
    state: GatewayState,
    texts: list[str],
    request_id: str,
    key: str | None,
    pinned: str | None,
    field: str = "texts",
    task: str = TASK,
) -> Classified:
    """The request path every classify protocol route shares, for any classify `task` (the bundled
    `classify` by default; the caller checked it is served): readiness, limits (errors name `field`),
    the in-flight bound, routing (`pinned` ref, else `key`, else `request_id`, against the split), the
    run with fallback to the teacher, metrics and live windows, and the offer to shadow.

    Example (in a route)::

        done = await classify_texts(state, ["great service"], request_id, key=None, pinned=None)
        done.served.ref, done.probabilities  # 'classify-teacher@1', (1, C)
    """
    if not state.ready:
        raise NotReady("models are still loading")
    check_limits(texts, state, field)
    if state.in_flight.count >= state.settings.max_in_flight:
        state.metrics.rejected.labels("overloaded").inc()
        raise Overloaded(f"more than {state.settings.max_in_flight} requests in flight; retry shortly")
    # One teacher per request: the one a failed student falls back to is the one the shadow scores with.
    teacher = state.pool.teacher_of(task)
    if teacher is None:
        raise state.no_model(task)
    chosen = choose(state, task, key or request_id, pinned, teacher)  # may refuse: before the in-flight count
    state.in_flight.enter()
    started = time.perf_counter()
    try:
        served, batched = await run_with_fallback(state, task, chosen, teacher, texts)
    except Exception as exc:
        state.metrics.requests.labels(task, chosen.ref, "503").inc()
        state.window.add(chosen.ref, requests=1, errors=1)
        if isinstance(exc, ModelUnavailable):
            raise
        log.error("the %s teacher failed", task, exc_info=True)
        raise ModelUnavailable(f"the {task} teacher failed; retry later") from exc
    finally:
        state.in_flight.leave()
    logits = batched.logits
    elapsed = time.perf_counter() - started
    state.metrics.request_seconds.labels(task, served.ref).observe(elapsed)
    state.metrics.requests.labels(task, served.ref, "200").inc()
    state.window.add(chosen.ref, latency_ms=elapsed * 1000.0, requests=1, errors=0 if served is chosen else 1)
    if state.shadow is not None:
        state.shadow.offer(
            ShadowItem(task, request_id, time.time(), served, texts, logits, elapsed * 1000.0), teacher
        )
    return Classified(chosen, served, batched)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    tags=["inference"],
    openapi_extra=openapi(ClassifyRequest, HEADERS),
)
async def classify(request: Request) -> Response:
    """Classifies one text (`text`) or a batch (`texts`) with the bundled task `classify`.

    `x-kdgate-key` keeps one caller on one model while the traffic split holds; `x-kdgate-model` pins a
    loaded model (operators, debugging).
    """
    # The handler reads its body and headers itself (body.py), and it is served past FastAPI's router
    # (direct.py): on the hot path, FastAPI's parameters and routing cost more than the gateway's work.
    return await _classify(request, TASK)


@router.post(
    "/classify/{task}",
    response_model=ClassifyResponse,
    tags=["inference"],
    openapi_extra=openapi(ClassifyRequest, HEADERS),
)
async def classify_task(request: Request, task: str) -> Response:
    """Classifies with the classify task `task` (an imported one, e.g. `topics`; or `classify`), as
    `/classify` does. An unknown task is a 404 naming the served ones."""
    return await _classify(request, task)


async def _classify(request: Request, task: str) -> Response:
    entered = time.perf_counter()
    state = _state(request)
    request_id = header(request, "x-request-id") or new_request_id()
    request.state.request_id = request_id  # error responses carry it too (app.py)
    if task != TASK:  # the bundled task answers 503 until its models are built, not 404
        state.served_task(task, TaskKind.CLASSIFY)
    key, pinned = header(request, "x-kdgate-key"), header(request, "x-kdgate-model")
    body = await read_json_body(request, ClassifyRequest)
    done = await classify_texts(state, body.items(), request_id, key, pinned, task=task)
    served = done.served
    labels = served.manifest.labels
    results = [  # rows as lists of floats: iterating an array makes a numpy scalar per number
        Prediction(label=labels[row.index(max(row))], probabilities=dict(zip(labels, row, strict=True)))
        for row in done.probabilities.tolist()
    ]
    # Serialised here, once, by pydantic-core: returning the model would have FastAPI validate it a
    # second time and walk it through its encoder. `response_model` above still documents it.
    content = ClassifyResponse(model=served.ref, request_id=request_id, results=results).model_dump_json()
    headers = {
        "x-request-id": request_id,
        "x-kdgate-model": served.ref,
        "server-timing": server_timing(done.batched, time.perf_counter() - entered, done.fell_back),
    }
    return Response(content, media_type="application/json", headers=headers)


def server_timing(batched: Batched, handler_s: float, fell_back: bool = False) -> str:
    """W3C Server-Timing: where the request's time went inside the handler, in ms. `queue` waits for a
    batch, `model` runs it (on the model's thread), `handler` is all of it; the rest of `handler` is the
    gateway's own work and the hops between the event loop and the model's thread. After a fallback,
    `queue` and `model` are the teacher's, and the student's failed attempt is inside `handler`."""
    timing = (
        f"queue;dur={batched.queued_s * 1000:.3f}, model;dur={batched.model_s * 1000:.3f}, "
        f'handler;dur={handler_s * 1000:.3f}, batch;desc="{batched.batch_size} texts"'
    )
    return timing + (', fallback;desc="teacher answered"' if fell_back else "")
