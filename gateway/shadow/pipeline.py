"""The shadow pipeline both tasks share: sampling, eligibility, bounded queues, drop accounting, workers
and the graceful stop. A task supplies only its scoring (and what one item weighs, and how a failure
reads in the log).

Request path: `offer()` only decides and enqueues, O(1), never blocks.
- A teacher-served item needs no second teacher call: it goes to the log lane as it is.
- A student item is eligible (the live window's and `kdgate_shadow_eligible`'s count), is sampled by
  a pure hash of its request id against its model's rate, and goes to the score lane; the candidate of
  an active rollout to the favoured lane, with room kept for it (queue.py): the judge waits on it.
- An item its queue has no room for is dropped and counted (`kdgate_shadow_total{outcome="dropped"}`
  and the window's `dropped`), never waited on.
Counts are in the task's unit, an item's `weight`: texts for /classify, completion tokens for /generate.

Workers: one asyncio task per lane, one shape: take an item, gather up to `most` (after `linger`
seconds while serving), hand the batch to the task's scorer, mark it done, rest as long as the lane's
budget asks. The scorer does its heavy work off the event loop (/classify in a teacher process of its
own, /generate in a niced thread) and the worker awaits it, so `join()` drains both tasks alike.

Use (a task's subclass, built once per process):

    pipeline.start()  # on the event loop, at start-up
    pipeline.offer(item, teacher=pool.teacher_of("classify"))  # on the request path
    await pipeline.close(drain_seconds=10.0)  # at shutdown: score what is queued, flush the log
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from gateway.serving.metrics import GatewayMetrics
from gateway.serving.routing import unit_hash
from gateway.serving.window import LiveWindow
from gateway.settings import Settings
from gateway.shadow.queue import FavouredAsyncQueue
from gateway.shadow.rates import ShadowRates


class Served(Protocol):
    @property
    def ref(self) -> str: ...


class Item(Protocol):
    @property
    def task(self) -> str: ...

    @property
    def request_id(self) -> str: ...

    @property
    def served(self) -> Served: ...


class RecordLog(Protocol):
    """Where scored records go: the shadow log's writers, one per task (distill.shadowlog.writer)."""

    def append(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


I = TypeVar("I", bound=Item)  # noqa: E741 (the item type, as T is a type)


def should_shadow(request_id: str, rate: float) -> bool:
    """Pure and reproducible: the same request id is always (not) sampled at a given rate.

    >>> should_shadow("r-1", 1.0), should_shadow("r-1", 0.0)
    (True, False)
    """
    return rate >= 1.0 or (rate > 0.0 and unit_hash("shadow", request_id) < rate)


def log_drops(metrics: GatewayMetrics) -> Callable[[list[dict[str, Any]], str], None]:
    """Counts the records the shadow log could not write (its store failing) as dropped items, in the
    items' unit: a /classify record is one text, a /generate one its completion's tokens."""

    def count(rows: list[dict[str, Any]], reason: str) -> None:
        for row in rows:
            ids = row.get("served_ids")
            weight = len(ids) if ids is not None else 1
            metrics.shadow.labels(row["task"], row["served_model"], "dropped", reason).inc(weight)

    return count


def more(items: list[I], queue: asyncio.Queue[I], most: int) -> list[I]:
    """`items` and whatever else is queued, up to `most` items in all."""
    while len(items) < most and not queue.empty():
        items.append(queue.get_nowait())
    return items


@dataclass
class Lane(Generic[I]):
    """A bounded queue and what its one worker does with a batch of it."""

    queue: FavouredAsyncQueue[I]
    handle: Callable[[list[I]], Awaitable[float]]  # scores and logs a batch; the CPU seconds it took
    most: int = 1  # items per batch
    linger: float = 0.0  # seconds a batch's first item waits for company, except while draining
    rest: Callable[[float], float] | None = None  # seconds to pause after a batch that took this CPU


class ShadowPipeline(ABC, Generic[I]):
    """A task's subclass passes its lanes: `score` for student items, `own` for teacher-served ones
    (None: they share the score lane, never favoured). Built only while shadowing is enabled
    (`settings.shadow_enabled`): the routes offer to a pipeline only when there is one."""

    kind: str  # the tasks it serves (classify | generate); each item counts under its own task

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        window: LiveWindow,
        writer: RecordLog,
        rates: ShadowRates,
        favoured: Callable[[str], bool],
        score: Lane[I],
        own: Lane[I] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.window = window
        self.writer = writer
        self.rates = rates
        self.favoured = favoured  # is this model the candidate of an active rollout?
        self.lanes = [score] if own is None else [score, own]
        self.queue, self.own_queue = score.queue, (own or score).queue
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False  # serving has stopped: drain at full speed
        self.standby = False  # another worker holds the machine's shadow lease: offer nothing (lease.py)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    @abstractmethod
    def weight(self, item: I) -> int:
        """What `item` counts for in every metric and the window: texts, tokens."""

    @abstractmethod
    def log_failure(self, items: list[I], why: object) -> None:
        """Logs that scoring `items` failed, `why` an exception or a reason."""

    async def prepare(self) -> None:
        """Started with the workers: readies the scorer off the request path."""

    async def stop_scoring(self) -> None:
        """After the workers are cancelled: stops what scores (a batch in hand may still be running)."""

    def rate_of(self, model: str) -> float:
        return self.rates.rate(model)

    def offer(self, item: I, teacher: object | None) -> None:
        """Called on the request path: O(1), never blocks. `teacher`: the task's teacher as loaded (None:
        nothing to shadow with). From another thread than the event loop's, the loop takes it over."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.offer, item, teacher)
            return
        if self.standby:
            return
        model, task, weight = item.served.ref, item.task, self.weight(item)
        if teacher is None or not weight:
            return
        if item.served is teacher:
            queued = self.own_queue.offer(item, favoured=False)
        else:
            self.window.add(model, eligible=weight)
            self.metrics.shadow_eligible.labels(task, model).inc(weight)
            if not should_shadow(item.request_id, self.rate_of(model)):
                return
            queued = self.queue.offer(item, self.favoured(model))
        if not queued:
            self.metrics.shadow.labels(task, model, "dropped", "queue_full").inc(weight)
            self.window.add(model, dropped=weight)

    def start(self) -> None:
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._workers = [loop.create_task(self.prepare())]
            self._workers += [loop.create_task(self._work(lane)) for lane in self.lanes]

    async def close(self, drain_seconds: float = 10.0) -> None:
        """Graceful stop: score what is queued (bounded by `drain_seconds`), then flush the log."""
        self._closing = True
        queues = [lane.queue for lane in self.lanes]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(queue.join() for queue in queues)), drain_seconds)
        for worker in self._workers:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for queue in queues:  # past the drain time: dropped, and counted as such
            while not queue.empty():
                self._count([queue.get_nowait()], "dropped", "shutdown")
        await self.stop_scoring()
        await asyncio.to_thread(self.writer.close)

    def failed(self, items: list[I], why: object) -> None:
        self.log_failure(items, why)
        self._count(items, "error")

    def _count(self, items: list[I], outcome: str, reason: str = "") -> None:
        for item in items:  # in the item's unit, like "compared"
            self.metrics.shadow.labels(item.task, item.served.ref, outcome, reason).inc(self.weight(item))

    async def _work(self, lane: Lane[I]) -> None:
        while True:
            first = await lane.queue.get()
            if lane.linger and not self._closing:
                await asyncio.sleep(lane.linger)
            items = more([first], lane.queue, lane.most)
            try:
                cpu_s = await lane.handle(items)
            except Exception as exc:
                self.failed(items, exc)
                cpu_s = 0.0
            finally:
                for _ in items:
                    lane.queue.task_done()
            if lane.rest is not None and not self._closing:
                await asyncio.sleep(lane.rest(cpu_s))
