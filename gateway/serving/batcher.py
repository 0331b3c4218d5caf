"""Per-model micro-batcher: groups concurrent requests into one model call, off the event loop.

Requests queue their texts; one asyncio task per model takes the first waiting request, waits up to
`max_wait` for more (until `max_batch` texts), and runs the model on the model's own single worker
thread. With `max_wait=0` (the default) it is work-conserving: an idle model runs at once on what is
queued, and a busy model's arrivals pile up into the next batch by themselves — at concurrency 1 a
wait is pure latency, and under load the queue already holds a batch (loadtests/bench_gateway.py).
The event loop only moves lists around; a model never runs two batches at once, so its thread count
is exactly what its runner was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

BatchFn = Callable[[list[str]], np.ndarray]  # texts -> (B, C) logits
ObserveFn = Callable[[int], None]  # called with each batch's size


@dataclass(frozen=True)
class Batched:
    """One request's rows of a batch, and where its time went (the `server-timing` header shows it)."""

    logits: np.ndarray  # (n, C)
    queued_s: float  # submit → its batch starts
    model_s: float  # the batch's model call, timed on the model's thread
    batch_size: int  # texts in the batch it rode in


class BatcherClosed(RuntimeError):
    """The model's batcher was closed (the gateway is stopping) before this request was answered."""


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[Batched]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers concurrent `submit` calls into batches of at most `max_batch` texts for `fn`, waiting at
    most `max_wait` seconds for a batch to fill.

    Example::

        batcher = MicroBatcher(runner.predict_logits, max_batch=32, max_wait=0.002)
        logits = await batcher.submit(["hello"])      # (1, C)
    """

    def __init__(
        self,
        fn: BatchFn,
        max_batch: int,
        max_wait: float,
        name: str = "model",
        observe: ObserveFn | None = None,
    ) -> None:
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._observe = observe
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"run-{name}")
        self._task: asyncio.Task[None] | None = None
        self._carry: _Pending | None = None
        self._unanswered: set[asyncio.Future[Batched]] = set()  # what `close` must not leave hanging
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stops batching: every request not answered yet, queued or on the model's thread, fails with
        `BatcherClosed` rather than waiting for ever, and so does every later `submit`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for future in list(self._unanswered):
            if not future.done():
                future.set_exception(BatcherClosed("the model's batcher is closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, texts: list[str]) -> np.ndarray:
        return (await self.submit_timed(texts)).logits

    async def submit_timed(self, texts: list[str]) -> Batched:
        if self._closed:
            raise BatcherClosed("the model's batcher is closed")
        self.start()
        future: asyncio.Future[Batched] = asyncio.get_running_loop().create_future()
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        await self._queue.put(_Pending(texts, future))
        return await future

    def _timed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        return self._fn(texts), time.perf_counter() - started

    async def _collect(self) -> list[_Pending]:
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.texts)
        deadline = first.enqueued + self.max_wait  # perf_counter: monotonic, and finer on every OS
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else await asyncio.wait_for(self._queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if size + len(item.texts) > self.max_batch:
                self._carry = item  # does not fit: it opens the next batch
                break
            batch.append(item)
            size += len(item.texts)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._collect() if not p.future.cancelled()]
            if not batch:
                continue
            texts = [t for p in batch for t in p.texts]
            if self._observe is not None:
                self._observe(len(texts))
            started = time.perf_counter()
            try:
                logits, model_s = await loop.run_in_executor(self._executor, self._timed, texts)
            except Exception as exc:  # the model's failure belongs to each waiting request
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            offset = 0
            for pending in batch:
                n = len(pending.texts)
                if not pending.future.done():
                    queued = started - pending.enqueued
                    pending.future.set_result(
                        Batched(logits[offset : offset + n], queued, model_s, len(texts))
                    )
                offset += n
