"""API keys of the inference routes: with `settings.api_keys` set, each call must bear one of them."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPBearer

from gateway.errors import Unauthorized
from gateway.state import GatewayState


class ApiKeys(HTTPBearer):
    """The inference routers' dependency (`Depends(require_api_key)`); a no-op while no key is set.

    The check is the security scheme's own `__call__`, so FastAPI documents the scheme and resolves one
    dependency per request, not a function depending on the scheme; and a coroutine, though nothing in
    it waits on I/O: FastAPI runs a plain `def` dependency in its thread pool, a hop to a thread and
    back on every request."""

    def __init__(self) -> None:
        super().__init__(auto_error=False)

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        state: GatewayState = request.app.state.gw
        keys = state.settings.api_keys
        if not keys:
            return
        credentials = await super().__call__(request)
        given = (credentials.credentials if credentials is not None else "").encode()
        # every key compared, in constant time each: the time taken says nothing about which key is near
        if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
            raise Unauthorized("this gateway needs 'Authorization: Bearer <api key>' (settings.api_keys)")


require_api_key = ApiKeys()
