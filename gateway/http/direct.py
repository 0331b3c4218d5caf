"""The inference routes served straight from the ASGI call, past FastAPI's router and request handler.

Why: on /classify, FastAPI 0.165's routing and request handler cost ~200 µs of event-loop CPU a
request, on the one core that HTTP gets. Served directly, a request at concurrency 1 took 865 µs of
the loop's CPU, against 1065 µs through FastAPI and 885 µs in the plain one-route FastAPI wrapper of the
same model (issue #20; an A/B of 8 alternating rounds, the loop thread's CPU read from /proc). The
routes stay declared on their routers, so /docs documents them, and FastAPI serves whatever this
middleware does not take.

What a route's handler gets here is what FastAPI gives it: the same `Request` (path parameters in
`request.path_params` and as keyword arguments), the API key check of an `ApiKeyRoute` first, and the
app's exception handlers in Starlette's order (the class's MRO; an exception none of them handles goes
on to Starlette's handler of last resort, as it does from FastAPI). Only a handler that reads its
request itself (`body.py`: the request and its path parameters, nothing else) can be served this way;
a route that takes FastAPI parameters or has dependencies is refused when the app starts (Starlette
builds its middleware on the first ASGI call, the lifespan's).

Example (in `create_app`)::

    app.add_middleware(DirectRoutes, routes=classify.router.routes)  # the rest go on to FastAPI
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.convertors import Convertor
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.auth import ApiKeyRoute, check_api_key

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class _Direct:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    convertors: dict[str, Convertor[Any]]
    handler: Handler
    guarded: bool  # an ApiKeyRoute: the API key is checked first


def _direct(route: BaseRoute) -> _Direct:
    if not isinstance(route, APIRoute):
        raise TypeError(f"{route!r}: only FastAPI routes can be served directly")
    if route.dependencies:
        raise TypeError(f"{route.path}: its dependencies would not run when it is served directly")
    pattern, _, convertors = compile_path(route.path)
    wanted = {"request", *convertors}
    taken = set(inspect.signature(route.endpoint).parameters)
    if taken != wanted:
        raise TypeError(
            f"{route.path}: a directly served handler takes the request and its path parameters "
            f"({sorted(wanted)}), not {sorted(taken)}: FastAPI's parameters are not solved here"
        )
    return _Direct(
        frozenset(route.methods or ()), pattern, convertors, route.endpoint, isinstance(route, ApiKeyRoute)
    )


class DirectRoutes:
    """ASGI middleware: requests that match one of `routes` (method and path) go straight to its
    handler; everything else goes on to the app."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = [_direct(route) for route in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _route_path(scope)
            for route in self.routes:
                if scope["method"] in route.methods and (match := route.pattern.match(path)):
                    params = {
                        name: route.convertors[name].convert(v) for name, v in match.groupdict().items()
                    }
                    scope["path_params"] = params
                    response = await self._respond(route, Request(scope, receive, send), params)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _respond(route: _Direct, request: Request, params: dict[str, Any]) -> Response:
        try:
            if route.guarded:
                check_api_key(request)
            return await route.handler(request, **params)
        except Exception as exc:
            handler = _handler_of(request.app.exception_handlers, exc)
            if handler is None:
                raise
            response: Response = await handler(request, exc)
            return response


def _handler_of(handlers: dict[Any, Any], exc: Exception) -> Any:
    """The app's handler of `exc`, as Starlette's ExceptionMiddleware finds it: by the class's MRO, short
    of `Exception`, whose handler Starlette runs outermost (and then re-raises, so the server logs it)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


def _route_path(scope: Scope) -> str:
    """The path routes match: without the prefix a proxy mounts the app under (`root_path`)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
