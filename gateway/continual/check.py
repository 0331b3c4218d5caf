"""One check of the continual loop: maybe re-distil the serving student, gate, register, start a canary.

The same check runs in two hosts: inside `kdgate serve` (`inprocess.py`, it acts on the gateway's own
parts) and as `kdgate distill watch` beside a running gateway (`watch.py`, it acts over the admin
API). A host supplies only what differs, through `Host`; the decision is the pure `should_redistill`,
fed from the shadow log in both: the records since the last run, and the serving student's
disagreement with the teacher on them.

Every gateway sharing a store may host the loop; only the holder of the store's `continual` lease
checks, so two never train on one window. What the loop remembers (`LoopStore`) is a document of the
same store: the gateway that takes the lease over goes on from it, a stopped run's window included.

    store = open_store(url, state_dir)
    loop = LoopStore(store.document(loop_document("classify")))
    lease = store.lease(process_identity("continual loop"), "continual")  # one per process, all tasks
    check = ContinualCheck(state_dir, host, CheckConfig(task="classify"), loop, lease=lease)
    print(await check.run_once())   # what it did, for the log
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from distill.registry import Registry, Role
from distill.shadowlog.reader import read_shadow
from distill.trigger import TriggerConfig, should_redistill
from gateway.continual.child import below_serving, redistill_command, run_child
from gateway.continual.store import LoopStore
from rollout.lease import Lease
from statestore import StoreUnavailable

log = logging.getLogger("kdgate.redistill")

ACTIVE_PHASES = ("progressing", "paused")  # one candidate at a time: a canary in flight blocks a run


@dataclass(frozen=True)
class CheckConfig:
    task: str = "classify"
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    threads: int = 1  # training threads; the run is also niced below the gateway
    nice: int = 10
    idle_class: bool = False  # SCHED_IDLE as well (see child.below_serving)
    auto_rollout: bool = True  # start a canary of every candidate that passes the gate
    rollout: dict[str, Any] = field(default_factory=dict)  # overrides of the canary's RolloutConfig
    gate: dict[str, float | None] = field(default_factory=dict)  # overrides of GateConfig; None: off
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides of the run's recipe
    shadow_root: str | None = None  # default <state_dir>/shadow
    registry_url: str | None = None  # default <state_dir>/models
    budget_minutes: float | None = None  # /generate: KD wall time of a run (default: the recipe's)


class Host(Protocol):
    """What a check needs from the gateway it serves, in-process or over the admin API."""

    async def rollout_phase(self, task: str) -> str | None: ...

    async def weights(self, task: str) -> dict[str, int]: ...

    async def load_new_models(self) -> None: ...

    async def start_canary(self, task: str, candidate: str, overrides: dict[str, Any]) -> None: ...

    async def protect_shadow_after(self, since: float | None) -> None:
        """Keep shadow segments from `since` on out of retention while a run reads them (None: release)."""
        ...


def parent_of(weights: dict[str, int], students: set[str], latest: str | None) -> str | None:
    """The serving student with the largest weight (ties: the first ref), else the latest student.

    >>> parent_of({"t@1": 50, "s@1": 25, "s@2": 25}, {"s@1", "s@2"}, "s@3")
    's@1'
    >>> parent_of({"t@1": 100}, {"s@1"}, "s@1")
    's@1'
    """
    serving = [r for r in weights if r in students]
    if serving:
        return max(sorted(serving), key=lambda r: weights[r])
    return latest


def live_disagreement(table: pa.Table, parent: str) -> tuple[float | None, int]:
    """The parent's disagreement with the teacher in shadow records, and how many comparisons it rests
    on: per request for /classify (`agree`), per token for /generate (`token_agree`)."""
    rows = [r for r in table.to_pylist() if r["served_model"] == parent]
    flags = [r["agree"] for r in rows if r.get("agree") is not None]
    flags += [a for r in rows for a in (r.get("token_agree") or [])]
    return (1.0 - sum(flags) / len(flags) if flags else None), len(flags)


def offline_disagreement(metrics: dict[str, Any]) -> float | None:
    """The student's own disagreement with the teacher when it was registered (classify records it;
    a generate student records its held-out token agreement).

    >>> offline_disagreement({"heldout_agreement": 0.75})
    0.25
    """
    if "disagreement" in metrics:
        return float(metrics["disagreement"])
    if "heldout_agreement" in metrics:
        return 1.0 - float(metrics["heldout_agreement"])
    return None


class ContinualCheck:
    """One task's check; `run_once()` is called every `check_seconds` by its host's loop."""

    def __init__(
        self,
        state_dir: Path,
        host: Host,
        config: CheckConfig,
        loop: LoopStore,
        *,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
        registry: Registry | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self.config = config
        self.task = config.task
        self.registry = registry or Registry(state_dir, config.registry_url)
        self.store = loop
        self.lease = lease  # None: this check is the only loop on its store
        self.leading = lease is None
        self.root = config.shadow_root or str(state_dir / "shadow")
        self.clock = clock

    async def parent(self) -> str | None:
        students = {m.ref for m in self.registry.models_of(self.task, Role.STUDENT)}
        latest = self.registry.latest(f"{self.task}-student")
        return parent_of(await self.host.weights(self.task), students, latest.ref if latest else None)

    async def run_once(self) -> str:
        """One look: maybe train, gate, register, load, start a canary. Returns what happened."""
        if not await self._leads():
            return f"no check here: {await self._holder()}"
        phase = await self.host.rollout_phase(self.task)
        if phase in ACTIVE_PHASES:
            return f"a {self.task} rollout is {phase}: waiting for it to finish"
        parent = await self.parent()
        if parent is None:
            return "no student to re-distil"
        since = self.store.last_until()
        until = self.store.interrupted(parent)
        if until is not None:
            reason = "resumed the run stopped before it ended"
        else:
            columns = ["served_model", "agree", "token_agree"]
            table = await asyncio.to_thread(read_shadow, self.root, self.task, since=since, columns=columns)
            live, compared = live_disagreement(table, parent)
            offline = offline_disagreement(self.registry.get(parent).metrics)
            trigger = should_redistill(table.num_rows, live, compared, offline, self.config.trigger)
            if not trigger.fire:
                return f"no run: {trigger.reason}"
            until, reason = self.clock(), trigger.reason
        await self.host.protect_shadow_after(since if since is not None else 0.0)
        try:
            with self.store.run(until, parent):
                result = await run_child(self._command(since, until, parent), self._below_serving())
        finally:
            await self.host.protect_shadow_after(None)
        if resumed := result.get("training", {}).get("resumed_from_step"):
            reason += f" (took up its checkpoint at step {resumed})"
        candidate = result.get("registered")
        if candidate is None:
            return f"{reason}; gate refused the candidate: {'; '.join(result['gate']['reasons'])}"
        await self.host.load_new_models()
        if not self.config.auto_rollout:
            return f"{reason}; registered {candidate}"
        await self.host.start_canary(self.task, candidate, self.config.rollout)
        return f"{reason}; registered {candidate}; canary started"

    async def _leads(self) -> bool:
        if self.lease is None:
            return True
        held = await asyncio.to_thread(self.lease.acquire)  # a PostgreSQL query: not on the event loop
        if held != self.leading:
            log.info("%s the continual loop's lease", "took" if held else "lost")
        self.leading = held
        return held

    async def _holder(self) -> str:
        assert self.lease is not None
        try:
            holder = await asyncio.to_thread(self.lease.holder)
        except StoreUnavailable as exc:
            return f"the state store is unavailable ({exc})"
        return f"{holder['identity']} holds the loop's lease" if holder else "the loop's lease is free"

    def _command(self, since: float | None, until: float, parent: str) -> list[str]:
        c = self.config
        return redistill_command(
            self.state_dir,
            since,
            until,
            parent,
            c.threads,
            c.gate,
            c.shadow_root,
            c.task,
            c.budget_minutes,
            c.recipe,
            c.registry_url,
        )

    def _below_serving(self) -> Callable[[], None]:
        return below_serving(self.config.nice, self.config.idle_class)
