"""`kdgate distill watch`: the continual check (`check.py`) as its own process, beside a running gateway.

It shares the gateway's state dir (registry and shadow log on the same disk, or the same object store)
and acts on the gateway only over its admin API: it reads the split and the rollout, and after a gated
candidate is registered it asks the gateway to load it and start its canary. Run this or
`redistill_enabled` in the gateway, not both: they would train twice on the same window.

    check = ContinualCheck(Path(".kdgate"), AdminHost(GatewayClient(url, token)), CheckConfig())
    print(asyncio.run(check.run_once()))
"""

from __future__ import annotations

from typing import Any

import httpx


class GatewayClient:
    """The few admin calls the watch makes; errors carry the gateway's message."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, f"{self.base_url}{path}", **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        return response.json()

    def rollout_phase(self, task: str) -> str | None:
        response = self._client.get(f"{self.base_url}/admin/rollouts/{task}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return str(response.json()["state"]["phase"])

    def weights(self, task: str) -> dict[str, int]:
        traffic: dict[str, dict[str, int]] = self._call("GET", "/admin/traffic")["traffic"]
        return traffic.get(task, {})

    def reload(self) -> list[str]:
        return list(self._call("POST", "/admin/models/reload")["loaded"])

    def start_rollout(self, task: str, candidate: str, overrides: dict[str, Any]) -> dict[str, Any]:
        body = {"task": task, "candidate": candidate, **overrides}
        result: dict[str, Any] = self._call("POST", "/admin/rollouts", json=body)
        return result


class AdminHost:
    """The check's host over a gateway's admin API. The gateway's shadow retention is its own: a run
    from here cannot protect the segments it reads (keep retention longer than a run takes)."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    async def rollout_phase(self, task: str) -> str | None:
        return self.client.rollout_phase(task)

    async def weights(self, task: str) -> dict[str, int]:
        return self.client.weights(task)

    async def load_new_models(self) -> None:
        self.client.reload()

    async def start_canary(self, task: str, candidate: str, overrides: dict[str, Any]) -> None:
        self.client.start_rollout(task, candidate, overrides)

    def protect_shadow_after(self, since: float | None) -> None:
        pass
