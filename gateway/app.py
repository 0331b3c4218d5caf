"""The FastAPI application: lifespan (load models off the loop), health, metrics, error mapping.

Example::

    app = create_app(Settings(state_dir=Path(".kdgate")))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from distill.registry import RegistryError
from gateway.continual.check import ContinualCheck
from gateway.continual.inprocess import GatewayHost, check_config, redistill_loop
from gateway.continual.store import LoopStore, loop_document
from gateway.errors import GatewayError, InvalidInput, MalformedRequest, NotFound, StoreDown
from gateway.http import admin, classify, generate, openai, rollouts, v2
from gateway.http.auth import document_api_keys
from gateway.http.body_limit import BodyLimit, document_body_limit
from gateway.http.direct import DirectRoutes
from gateway.rollouts.published import PUBLISH_S
from gateway.serving.default_build import missing_defaults, start_background_build
from gateway.settings import Settings
from gateway.shadow.lease import start_or_stand_by, take_over_when_free
from gateway.state import GatewayState
from statestore import StoreUnavailable

log = logging.getLogger("kdgate.app")
REGISTRY_FOLLOW_S = 2.0  # how often a worker looks for models another process registered


async def _drive_rollouts(state: GatewayState) -> None:
    """The in-process controller: once the models are loaded, tick (the first tick that holds the
    controller lease re-asserts the persisted weights)."""
    while not state.ready:
        await asyncio.sleep(0.1)
    while True:
        await _survive(state.controller.tick)
        await asyncio.sleep(state.settings.rollout_tick_seconds)


async def _follow_rollouts(state: GatewayState) -> None:
    """Rollouts driven by a standalone `kdgate rollout run`: only follow which candidates are under
    rollout (from the rollout store, when the driver shares this state dir), for the shadow to favour."""
    while True:
        await _survive(state.controller.follow)
        await asyncio.sleep(state.settings.rollout_tick_seconds)


async def _follow_registry(state: GatewayState, seen: int) -> None:
    """Load the models another gateway was told to load (a reload announced through the state store:
    `registry_news.py`). One of several workers on a machine also looks at the registry itself on every
    look, for what any process registered (the worker that builds the default models, `kdgate distill`,
    an import), as the builder reloads after each of its steps: a worker on a fresh state would otherwise
    answer 503 until restarted. A gateway of one worker lists the registry only when told, so a bucket
    is not listed every few seconds by each replica. `seen`: the generation of the news read
    before this gateway listed the registry to load its models."""
    failed = ""  # what the last failed look was loading: said once, not on every look
    while True:
        await asyncio.sleep(REGISTRY_FOLLOW_S)
        try:
            told = await asyncio.to_thread(state.registry_news.generation)
        except StoreUnavailable:  # the store is away: a worker still looks at the registry itself
            told = seen
        if told == seen and state.settings.workers == 1:
            continue
        new: frozenset[str] = frozenset()
        try:
            new = await asyncio.to_thread(state.unloaded)
            seen = told
            if new:
                await asyncio.to_thread(state.load_models)
                state.ready = True
            failed = ""
        except Exception:
            what = ", ".join(sorted(new)) or "models (the registry could not be listed)"
            if what != failed:
                log.exception("loading the newly registered %s failed", what)
            failed = what


async def _survive(look: Callable[[], object]) -> None:
    """One look of a rollout loop, off the event loop; a failure (the store unreachable) is logged and
    the loop goes on, so the controller is back when the store is."""
    try:
        await asyncio.to_thread(look)
    except StoreUnavailable as exc:
        log.warning("rollout store unavailable: %s", exc)
    except Exception:
        log.exception("rollout loop: one look failed")


async def _publish_windows(state: GatewayState) -> None:
    """This process's live window for the rollouts in progress, to the store for the judge (off the loop)."""
    while True:
        await _survive(lambda: state.board.publish(list(state.controller.active.values())))
        await _survive(state.metrics.refresh)
        await asyncio.sleep(PUBLISH_S)


def _continual_loop(state: GatewayState) -> Coroutine[Any, Any, None]:
    settings = state.settings
    host = GatewayHost(state.pool, state.traffic, state.controller, state.shadow_protection)
    kinds = state.registry.task_kinds()
    for task in set(settings.redistill_tasks) - set(kinds):
        log.warning("redistill_tasks names %r, which has no model: import one and restart", task)
    lease = state.store.lease(host.holder, "continual")  # one loop of all the gateways on the store
    checks = [
        ContinualCheck(
            settings.state_dir,
            host,
            check_config(settings, t, kinds[t]),
            LoopStore(state.store.document(loop_document(t))),
            lease=lease,
            registry=state.registry,
        )
        for t in settings.redistill_tasks
        if t in kinds
    ]
    return redistill_loop(checks, settings.redistill_check_seconds, lambda: state.ready, lease)


def create_app(
    settings: Settings, *, clock: Callable[[], float] = time.time, drive_rollouts: bool = True
) -> FastAPI:
    """The gateway. `clock` (epoch seconds) is the time its rollout judge decides on; with
    `drive_rollouts=False` the in-process controller (`app.state.gw.controller`) ticks only when its
    caller says so. Both are for tests that step rollouts on a fake clock.
    """
    state = GatewayState.build(settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await asyncio.to_thread(state.load_models)
                state.ready = True
            except RegistryError:  # the models that could be loaded serve; readyz says per task
                log.exception("some registered models could not be loaded")
                state.ready = True
            except Exception as exc:  # readyz reports it; the process stays up for inspection
                log.exception("loading models failed")
                state.load_error = f"{type(exc).__name__}: {exc}"

        # Read before the models are listed: a reload announced after this is one the follower sees.
        registry_generation = state.registry_news.generation()
        state.tasks["loader"] = asyncio.create_task(load())
        if settings.workers > 1:
            # One of several workers on the port: it takes connections (uvicorn listens after this
            # startup) only once it can answer them, while the others serve.
            await asyncio.shield(state.tasks["loader"])
        if settings.build_missing_models and (steps := missing_defaults(state)):
            state.tasks["build"] = start_background_build(state, steps)
        shadows = [p for p in (state.shadow, state.generate_shadow) if p is not None]
        if not start_or_stand_by(state.shadow_lease, shadows) and state.shadow_lease is not None:
            state.tasks["shadow-lease"] = asyncio.create_task(
                take_over_when_free(state.shadow_lease, shadows)
            )
        state.tasks["windows"] = asyncio.create_task(_publish_windows(state))
        state.tasks["registry"] = asyncio.create_task(_follow_registry(state, registry_generation))
        if settings.redistill_enabled:
            state.tasks["redistill"] = asyncio.create_task(_continual_loop(state))
        if settings.rollout_driver == "local":
            if drive_rollouts:
                state.tasks["rollout"] = asyncio.create_task(_drive_rollouts(state))
        else:
            state.tasks["rollout"] = asyncio.create_task(_follow_rollouts(state))
        yield
        for task in state.tasks.values():
            task.cancel()
        state.controller.resign()
        if state.shadow is not None:
            # graceful stop (SIGTERM): score what is queued, flush the log
            await state.shadow.close(settings.shadow_drain_seconds)
        if state.generate_shadow is not None:
            await state.generate_shadow.close(settings.shadow_drain_seconds)
        if state.shadow_lease is not None:
            state.shadow_lease.release()
        await state.pool.close()
        state.store.close()

    app = FastAPI(
        title="kdgate",
        version="0.1.0",
        lifespan=lifespan,
        description="Serve a teacher and its distilled students side by side.",
    )
    app.state.gw = state
    app.include_router(classify.router)
    app.include_router(generate.router)
    app.include_router(openai.router)
    app.include_router(v2.router)
    app.include_router(v2.infer_router)
    app.include_router(admin.router)
    app.include_router(rollouts.router)
    _install_error_handlers(app)
    document_api_keys(app)
    document_body_limit(app, settings.body_bytes_limit)
    # The hot inference routes, past FastAPI's routing and request handler (gateway/http/direct.py).
    app.add_middleware(DirectRoutes, routes=[*classify.router.routes, *v2.infer_router.routes])
    app.add_middleware(BodyLimit, max_bytes=settings.body_bytes_limit, refuse=_error)  # added last: outside

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 once a task can answer (its teacher is loaded), with each task's readiness."""
        if not state.ready:
            body = {"status": "loading" if state.load_error is None else "failed", "error": state.load_error}
            return JSONResponse(body, status_code=503)
        tasks = state.task_readiness()
        models = sorted(state.pool.tasks_of())
        if "ready" in tasks.values():
            return JSONResponse({"status": "ready", "tasks": tasks, "models": models})
        status = "building" if state.building else "no_models"
        return JSONResponse({"status": status, "tasks": tasks, "models": models}, status_code=503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        if state.shadow is not None:
            state.shadow.update_rate_gauges()
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def _request_id(request: Request) -> dict[str, str]:
    """The request id for an error response: the handler's, else the caller's (a request refused before
    its handler ran has none of its own)."""
    rid = getattr(request.state, "request_id", None) or request.headers.get("x-request-id")
    return {"x-request-id": rid[:256]} if rid else {}


ErrorShape = Callable[[GatewayError, dict[str, str]], JSONResponse]  # (error, headers) -> response

# The protocols with an error shape of their own, by path prefix; other paths get gateway/errors.py's.
PROTOCOL_ERRORS: dict[str, ErrorShape] = {
    v2.PREFIX + "/": v2.error_response,
    openai.PREFIX + "/": openai.error_response,
}


def _protocol_shape(request: Request) -> ErrorShape | None:
    return next((shape for p, shape in PROTOCOL_ERRORS.items() if request.url.path.startswith(p)), None)


def _error(request: Request, err: GatewayError, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    """`err` in the shape of the protocol the request spoke (`details`, FastAPI's validation errors, only
    in the native shape)."""
    headers = err.headers() | _request_id(request)
    shape = _protocol_shape(request)
    if shape is not None:
        return shape(err, headers)
    body = err.body()
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=err.status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error(request, exc)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return _error(request, StoreDown(f"the state store is unavailable, nothing was changed: {exc}"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(location) or "body"
        if first.get("type") == "json_invalid":
            err: GatewayError = MalformedRequest(
                f"request body is not valid JSON: {first.get('msg')}", "body"
            )
        else:
            err = InvalidInput(f"{field}: {first.get('msg', 'invalid')}", field)
        details = [{"field": ".".join(map(str, e.get("loc", ()))), "message": e.get("msg")} for e in errors]
        return _error(request, err, details)

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException) -> Response:
        """A path no route serves: a protocol's clients read its own shape (the rest get FastAPI's)."""
        shape = _protocol_shape(request)
        if shape is None or exc.status_code != 404:
            return await http_exception_handler(request, exc)
        return shape(NotFound(f"no route {request.method} {request.url.path}"), _request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(request, GatewayError("internal error"))
