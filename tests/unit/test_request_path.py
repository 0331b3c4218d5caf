"""What FastAPI does on every inference request before the handler runs: nothing that leaves the event
loop. A sync (`def`) dependency is run in AnyIO's thread pool: a hand-off to a thread and back on every
call, which a model that answers in a millisecond feels (loadtests/bench_workers.py measures it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from gateway.http import classify, generate, openai, v2
from gateway.http.auth import ApiKeyRoute


def awaited(call: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose `__call__` is one (FastAPI's security classes)."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def sync_dependencies(dependant: Dependant) -> list[str]:
    """Names of the dependencies in `dependant`'s tree that FastAPI would run in its thread pool."""
    found = []
    for sub in dependant.dependencies:
        if sub.call is not None and not awaited(sub.call):
            found.append(getattr(sub.call, "__qualname__", repr(sub.call)))
        found += sync_dependencies(sub)
    return found


def test_no_inference_route_runs_a_dependency_in_the_thread_pool() -> None:
    routers = (classify.router, generate.router, openai.router, v2.router, v2.infer_router)
    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 6  # /classify, /classify/{task}, /generate, OpenAI, v2: the table is not empty
    offenders = {r.path: names for r in routes if (names := sync_dependencies(r.dependant))}
    assert offenders == {}
    assert all(awaited(r.endpoint) for r in routes)  # and no sync endpoint either


def test_every_inference_route_checks_the_api_key_before_its_handler() -> None:
    """By its route class, not a dependency (gateway/http/auth.py says why); a route added to these
    routers is guarded without having to remember it."""
    inference = (classify.router, generate.router, openai.router, v2.infer_router)
    routes = [r for router in inference for r in router.routes]
    assert len(routes) >= 6 and all(isinstance(r, ApiKeyRoute) for r in routes)
