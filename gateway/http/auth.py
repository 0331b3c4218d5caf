"""API keys of the inference routes: with `settings.api_keys` set, each call must bear one of them.

Inference routers are built with `route_class=ApiKeyRoute`: the key is checked before the route's own
handler runs, and the operation is documented as needing the bearer key. Why not a dependency
(`Depends(...)` on the router): FastAPI solves a sub-dependency on every request, and that was the
largest single share of the gateway's own CPU on /classify (~27 µs of ~215 µs per request with a no-op
model, measured in-process over ASGI; loadtests/bench_workers.py has the end-to-end figures).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from gateway.errors import Unauthorized
from gateway.http.contract import Schema, complete_openapi
from gateway.state import GatewayState

SCHEME = "ApiKeys"  # the OpenAPI security scheme the guarded operations name

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def check_api_key(request: Request) -> None:
    """Refuses (401) a request without one of `settings.api_keys` as its bearer token; no-op without keys."""
    state: GatewayState = request.app.state.gw
    keys = state.settings.api_keys
    if not keys:
        return
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    # every key compared, in constant time each: the time taken says nothing about which key is near
    if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
        raise Unauthorized("this gateway needs 'Authorization: Bearer <api key>' (settings.api_keys)")


class ApiKeyRoute(APIRoute):
    """The route class of inference routers: the API key is checked first (errors take the app's
    handlers, in the protocol's own shape), and /docs shows the operation needing it. `DirectRoutes`,
    which serves the hottest of them past FastAPI's request handler, checks it the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["openapi_extra"] = {"security": [{SCHEME: []}], **(kwargs.get("openapi_extra") or {})}
        super().__init__(*args, **kwargs)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            check_api_key(request)
            return await handler(request)

        return guarded


def document_api_keys(app: FastAPI) -> None:
    """Adds the scheme `ApiKeyRoute` operations name to the app's OpenAPI components (FastAPI declares
    schemes only for dependencies)."""

    def add_scheme(schema: Schema) -> None:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "One of the gateway's api_keys; inference routes are open while none is set.",
        }

    complete_openapi(app, add_scheme)
