"""The one client of a gateway's admin HTTP API: the CLI, `kdgate distill watch` and the standalone
controller (`kdgate rollout run`) all reach a gateway through it.

Every failure is one `AdminError`: `status` is the gateway's HTTP status, or None when the gateway could
not be reached; the message carries the gateway's own error message, and `detail` its `error` object as
sent (or the transport's error when unreached).

As the controller's `WeightSetter`, `set_weights` forces the split: the gateway refuses a manual split
during a rollout unless forced, and the controller owning the rollout is not manual.

Example::

    with AdminClient("http://gateway:8000", token) as admin:
        admin.set_traffic("classify", {"classify-teacher@1": 75, "classify-student@3": 25})
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx


class AdminError(RuntimeError):
    """The gateway refused or failed an admin call (`status`), or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class AdminClient:
    """Admin calls over one connection pool, authorised by the gateway's admin token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def call(
        self, method: str, path: str, body: object | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One admin request; the answer's JSON object, or AdminError."""
        try:
            response = self._client.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise AdminError(f"gateway unreachable at {self.base_url}: {exc}", detail=str(exc)) from exc
        if response.status_code >= 400:
            detail = _error_detail(response)
            message = detail.get("message", detail) if isinstance(detail, dict) else detail
            raise AdminError(
                f"{method} {path} -> {response.status_code}: {message}", response.status_code, detail
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise AdminError(
                f"{method} {path}: not JSON: {response.text[:300]}", response.status_code, response.text[:300]
            ) from exc
        return dict(payload)

    # --- traffic ---------------------------------------------------------------------------------------

    def traffic(self) -> dict[str, dict[str, int]]:
        """Every task's split: {task: {ref: weight}}."""
        return dict(self.call("GET", "/admin/traffic")["traffic"])

    def set_traffic(self, task: str, weights: dict[str, int], force: bool = False) -> dict[str, Any]:
        """Replace the task's split; `force` overrides a rollout's ownership of it."""
        params = {"force": "true"} if force else None
        return self.call("PUT", f"/admin/traffic/{_segment(task)}", {"weights": dict(weights)}, params)

    def set_weights(self, task: str, weights: dict[str, int]) -> None:
        """The controller's `WeightSetter`: the split it decided, forced."""
        self.set_traffic(task, weights, force=True)

    # --- rollouts --------------------------------------------------------------------------------------

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a rollout (`task`, `candidate` and any config overrides); its state and config."""
        return self.call("POST", "/admin/rollouts", body)

    def rollout(self, task: str) -> dict[str, Any]:
        """The task's rollout: state, config and the judge's evidence (AdminError 404 if never started)."""
        return self.call("GET", f"/admin/rollouts/{_segment(task)}")

    def rollout_phase(self, task: str) -> str | None:
        """The phase of the task's rollout; None if none was ever started."""
        try:
            return str(self.rollout(task)["state"]["phase"])
        except AdminError as exc:
            if exc.status == 404:
                return None
            raise

    def command_rollout(self, task: str, command: str, reason: str = "") -> dict[str, Any]:
        """`pause`, `resume`, `promote` or `abort` the task's rollout; its new state."""
        return self.call("POST", f"/admin/rollouts/{_segment(task)}/{_segment(command)}", {"reason": reason})

    def events(self, task: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent rollout transitions from the audit log, oldest first."""
        params: dict[str, Any] = {"limit": limit} | ({"task": task} if task else {})
        return list(self.call("GET", "/admin/events", params=params)["events"])

    # --- models and shadow -----------------------------------------------------------------------------

    def reload(self) -> list[str]:
        """Load models registered since the gateway started; the refs newly loaded."""
        return list(self.call("POST", "/admin/models/reload")["loaded"])

    def build(self) -> dict[str, Any]:
        """The background build of a fresh gateway's default models: each step's state and times."""
        return self.call("GET", "/admin/build")

    def shadow(self) -> dict[str, Any]:
        """Whether the shadow is on, and each student's rate and what the shadow scored and dropped."""
        return self.call("GET", "/admin/shadow")

    def set_shadow_rates(self, task: str, rates: dict[str, float | None]) -> dict[str, Any]:
        """Set students' shadow rates (None: back to the default)."""
        return self.call("PUT", f"/admin/shadow/{_segment(task)}", {"rates": dict(rates)})

    def hold_shadow(self, holder: str, since: float) -> dict[str, Any]:
        """Keep the shadow log from `since` on out of every replica's retention until released."""
        return self.call("PUT", f"/admin/shadow/holds/{_segment(holder)}", {"since": since})

    def release_shadow(self, holder: str) -> dict[str, Any]:
        return self.call("DELETE", f"/admin/shadow/holds/{_segment(holder)}")


def _segment(name: str) -> str:
    return quote(name, safe="")


def _error_detail(response: httpx.Response) -> object:
    # The gateway answers `{"error": {"type": ..., "message": ...}}`; anything else is kept as it came.
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    return body.get("error", body) if isinstance(body, dict) else body
