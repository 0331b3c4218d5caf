"""API keys of the inference routes: with `settings.api_keys` set, each call must bear one of them."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import Unauthorized
from gateway.state import GatewayState

_bearer = HTTPBearer(auto_error=False)


def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    """A FastAPI dependency for inference routers; a no-op while no key is configured."""
    state: GatewayState = request.app.state.gw
    keys = state.settings.api_keys
    if not keys:
        return
    given = (credentials.credentials if credentials is not None else "").encode()
    # every key compared, in constant time each: the time taken says nothing about which key is near
    if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
        raise Unauthorized("this gateway needs 'Authorization: Bearer <api key>' (settings.api_keys)")
