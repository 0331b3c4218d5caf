"""`kdgate distill watch`: the continual check (`check.py`) as its own process, beside a running gateway.

It shares the gateway's state dir (registry and shadow log on the same disk, or the same object store)
and acts on the gateway only over its admin API: it reads the split and the rollout, and after a gated
candidate is registered it asks the gateway to load it and start its canary. Run this or
`redistill_enabled` in the gateway, not both; on the local store they contend for the one `continual`
lease, so only one of them checks.

    loop = LoopStore(open_store(None, Path(".kdgate")).document(loop_document("classify")))
    check = ContinualCheck(Path(".kdgate"), AdminHost(AdminClient(url, token)), CheckConfig(), loop)
    print(asyncio.run(check.run_once()))
"""

from __future__ import annotations

import logging
from typing import Any

from rollout.admin_client import AdminClient, AdminError
from rollout.lease import process_identity

log = logging.getLogger("kdgate.redistill")


class AdminHost:
    """The check's host over a gateway's admin API; a run's hold on the shadow log goes through it to
    the state store, which every replica's retention reads."""

    def __init__(self, client: AdminClient) -> None:
        self.client = client
        self.holder = process_identity("distill watch")

    async def rollout_phase(self, task: str) -> str | None:
        return self.client.rollout_phase(task)

    async def weights(self, task: str) -> dict[str, int]:
        return self.client.traffic().get(task, {})

    async def load_new_models(self) -> None:
        self.client.reload()

    async def start_canary(self, task: str, candidate: str, overrides: dict[str, Any]) -> None:
        self.client.start_rollout({"task": task, "candidate": candidate, **overrides})

    async def protect_shadow_after(self, since: float | None) -> None:
        if since is not None:
            self.client.hold_shadow(self.holder, since)
            return
        try:
            self.client.release_shadow(self.holder)
        except AdminError:  # the hold expires on its own (gateway.shadow.protection.HOLD_TTL_S)
            log.warning("could not release the shadow log hold of %s", self.holder, exc_info=True)
