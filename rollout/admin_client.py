"""`WeightSetter` over a gateway's admin HTTP API, for the standalone controller (`kdgate rollout run`).

The controller owns the split while a rollout is progressing, so it sets it with `?force=true`: the
gateway refuses manual `traffic set` during a rollout unless forced, and the controller is not manual.

Example::

    setter = GatewayAdminClient("http://gateway:8000", token)
    setter.set_weights("classify", {"classify-teacher@1": 75, "classify-student@3": 25})
"""

from __future__ import annotations

from urllib.parse import quote

import httpx


class GatewayAdminError(RuntimeError):
    """The gateway refused or failed an admin call, or could not be reached (`status` None then)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayAdminClient:
    def __init__(self, base_url: str, token: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._client.close()

    def set_weights(self, task: str, weights: dict[str, int]) -> None:
        """Replace the task's split; raises GatewayAdminError with the gateway's message if refused."""
        url = f"{self.base_url}/admin/traffic/{quote(task, safe='')}"
        try:
            response = self._client.put(url, params={"force": "true"}, json={"weights": dict(weights)})
        except httpx.HTTPError as exc:
            raise GatewayAdminError(f"gateway unreachable at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            message = _error_message(response)
            raise GatewayAdminError(
                f"set weights of {task!r} refused ({response.status_code}): {message}", response.status_code
            )


def _error_message(response: httpx.Response) -> str:
    # The gateway answers `{"error": {"type": ..., "message": ...}}`; anything else is shown as it came.
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return str(error if error is not None else body)[:300]
