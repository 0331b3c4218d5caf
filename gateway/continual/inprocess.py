"""The continual loop inside `kdgate serve`: the one check (`check.py`) acting on the gateway's parts.

Runs are one at a time across tasks (both cores are shared with serving); the training child is started
from the event loop's thread, which lives as long as the gateway (the child's parent-death signal
follows the thread that started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from distill.registry import TaskKind
from distill.trigger import TriggerConfig
from gateway.continual.check import CheckConfig, ContinualCheck
from gateway.rollouts.start import RolloutStart, start_rollout
from gateway.serving.pool import ModelPool
from gateway.serving.traffic import TrafficStore
from gateway.settings import Settings
from gateway.shadow.protection import ShadowProtection
from rollout.driver import Controller, NoRollout
from rollout.lease import Lease, process_identity

log = logging.getLogger("kdgate.redistill")


class GatewayHost:
    """The check's host inside the gateway: its own pool, split and rollout controller, and the shadow
    log holds every replica's retention reads."""

    def __init__(
        self, pool: ModelPool, traffic: TrafficStore, controller: Controller, protection: ShadowProtection
    ) -> None:
        self.pool = pool
        self.traffic = traffic
        self.controller = controller
        self.protection = protection
        self.holder = process_identity("continual loop")

    async def rollout_phase(self, task: str) -> str | None:
        try:
            state, _ = self.controller.state(task)
        except NoRollout:
            return None
        return state.phase.value

    async def weights(self, task: str) -> dict[str, int]:
        return self.traffic.get(task)

    async def load_new_models(self) -> None:
        await asyncio.to_thread(self.pool.load_all)

    async def start_canary(self, task: str, candidate: str, overrides: dict[str, Any]) -> None:
        body = RolloutStart(task=task, candidate=candidate, **overrides)
        await asyncio.to_thread(start_rollout, body, self.pool, self.traffic, self.controller, "judge")

    async def protect_shadow_after(self, since: float | None) -> None:
        # A write to the state store (an fsync, or a PostgreSQL transaction): not on the event loop.
        if since is not None:
            await asyncio.to_thread(self.protection.hold, self.holder, since)
            return
        try:
            await asyncio.to_thread(self.protection.release, self.holder)
        except Exception:  # the store is down: the hold expires on its own (protection.HOLD_TTL_S)
            log.warning("could not release the shadow log hold of %s", self.holder, exc_info=True)


def check_config(settings: Settings, task: str, kind: TaskKind) -> CheckConfig:
    """The check of `task` (of `kind`), from the gateway's `redistill_*` settings."""
    generate = kind is TaskKind.GENERATE
    minimum = settings.redistill_min_new_completions if generate else settings.redistill_min_new_records
    return CheckConfig(
        task=task,
        trigger=TriggerConfig(minimum, settings.redistill_drift),
        threads=settings.redistill_threads,
        nice=settings.redistill_nice,
        idle_class=settings.redistill_idle_class,
        auto_rollout=settings.redistill_auto_rollout,
        rollout=settings.redistill_rollout,
        gate=settings.redistill_gate,
        recipe=settings.redistill_recipes.get(task, {}),
        shadow_root=settings.shadow_url,
        registry_url=settings.registry_url,
        budget_minutes=settings.redistill_generate_budget_minutes if generate else None,
    )


async def redistill_loop(
    checks: list[ContinualCheck], interval: float, ready: Callable[[], bool], lease: Lease | None = None
) -> None:
    """Every `interval` seconds once the models are loaded, each task's check in turn. The checks share
    this process's `lease` (the store's `continual` one), which a stopping gateway lets go."""
    try:
        while not ready():
            await asyncio.sleep(0.2)
        while True:
            await asyncio.sleep(interval)
            for check in checks:
                try:
                    log.info("re-distillation check of %s: %s", check.task, await check.run_once())
                except Exception:  # the loop survives a failed run; the next check tries again
                    log.exception("re-distillation check failed for %s", check.task)
    finally:
        if lease is not None:
            with contextlib.suppress(Exception):  # the store is down: its session's end frees it
                lease.release()
