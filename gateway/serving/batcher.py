"""Per-model micro-batcher: groups concurrent requests into one model call, off the event loop.

Each model has one worker thread that owns the batching: it takes the first waiting request from a
thread-safe queue, waits up to `max_wait` for more (until `max_batch` texts), runs the model and
hands the rows back to the event loop in one callback. With `max_wait=0` (the default) it is
work-conserving: an idle model runs at once on what is queued, and a busy model's arrivals pile up
into the next batch by themselves — at concurrency 1 a wait is pure latency, and under load the queue
already holds a batch (loadtests/bench_gateway.py).

Why the worker batches rather than an asyncio task that sends each batch to an executor: the model's
thread goes from one batch straight to the next. With the task, it sat idle until a busy event loop
noticed the last batch was done and sent the next; under load that idle time cost up to a third of
the throughput (c=8, bench_workers with --baseline-tree at the loop-side batcher, 099c0ae). And a
request costs the loop one queue put and a share of one callback, not an executor future chained to an
asyncio one. A model never runs two batches at once, so its thread count is exactly what its runner
was given.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# texts -> (logits, probabilities), each (B, C): both made on the model's thread, once per batch
# (pool.scored), so the event loop only hands each request its rows.
BatchFn = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
ObserveFn = Callable[[int], None]  # called with each batch's size, on the model's thread


@dataclass(frozen=True)
class Batched:
    """One request's rows of a batch, and where its time went (the `server-timing` header shows it)."""

    logits: np.ndarray  # (n, C)
    probabilities: np.ndarray  # (n, C), what the model serves (calibrated softmax of `logits`)
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


_STOP = None  # put on the queue by `close`: the worker thread ends


class MicroBatcher:
    """Gathers concurrent `submit` calls into batches of at most `max_batch` texts for `fn`, waiting at
    most `max_wait` seconds for a batch to fill. Used from one event loop.

    Example::

        batcher = MicroBatcher(scored(runner), max_batch=32, max_wait=0.002)  # pool.scored
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
        self._name = name
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unanswered: set[asyncio.Future[Batched]] = set()  # what `close` must not leave hanging
        self._closed = False

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            # A daemon: a gateway stopping mid-batch must not wait on the model to exit.
            self._thread = threading.Thread(target=self._work, name=f"run-{self._name}", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Stops batching: every request not answered yet, queued or on the model's thread, fails with
        `BatcherClosed` rather than waiting for ever, and so does every later `submit`. A batch already
        on the model's thread finishes there; nothing queued behind it runs."""
        self._closed = True
        self._queue.put(_STOP)
        for future in list(self._unanswered):
            if not future.done():
                future.set_exception(BatcherClosed("the model's batcher is closed"))

    async def submit(self, texts: list[str]) -> np.ndarray:
        return (await self.submit_timed(texts)).logits

    async def submit_timed(self, texts: list[str]) -> Batched:
        if self._closed:
            raise BatcherClosed("the model's batcher is closed")
        self.start()
        future: asyncio.Future[Batched] = asyncio.get_running_loop().create_future()
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        self._queue.put(_Pending(texts, future))
        return await future

    # The model's thread from here on.

    def _work(self) -> None:
        carry: _Pending | None = None
        while True:
            collected = self._collect(carry)
            if collected is None or self._closed:
                return
            batch, carry = collected
            # `cancelled()` read off the loop's thread: at worst a request cancelled this instant is
            # computed for nothing; `_answer`, on the loop, checks again before answering.
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            texts = [t for p in batch for t in p.texts]
            if self._observe is not None:
                self._observe(len(texts))
            started = time.perf_counter()
            outcome: tuple[np.ndarray, np.ndarray] | Exception
            try:
                outcome = self._fn(texts)
            except Exception as exc:  # the model's failure belongs to each waiting request
                outcome = exc
            model_s = time.perf_counter() - started
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._answer, batch, outcome, started, model_s, len(texts))
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _collect(self, carry: _Pending | None) -> tuple[list[_Pending], _Pending | None] | None:
        """The next batch and the request that did not fit in it, or None once closed."""
        first = carry if carry is not None else self._queue.get()
        if first is _STOP:
            return None
        batch, size = [first], len(first.texts)
        deadline = first.enqueued + self.max_wait  # perf_counter: monotonic, and finer on every OS
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _STOP:
                return None
            if size + len(item.texts) > self.max_batch:
                return batch, item  # does not fit: it opens the next batch
            batch.append(item)
            size += len(item.texts)
        return batch, None

    @staticmethod
    def _answer(
        batch: list[_Pending],
        outcome: tuple[np.ndarray, np.ndarray] | Exception,
        started: float,
        model_s: float,
        size: int,
    ) -> None:
        """On the event loop: each waiting request gets its own rows, or the model's exception."""
        offset = 0
        for pending in batch:
            n = len(pending.texts)
            if not pending.future.done():
                if isinstance(outcome, Exception):
                    pending.future.set_exception(outcome)
                else:
                    logits, probabilities = outcome
                    rows = slice(offset, offset + n)
                    queued = started - pending.enqueued
                    pending.future.set_result(
                        Batched(logits[rows], probabilities[rows], queued, model_s, size)
                    )
            offset += n
