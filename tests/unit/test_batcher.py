"""Unit tests of gateway.serving.batcher.MicroBatcher with a plain deterministic batch function (no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from gateway.serving.batcher import Batched, BatcherClosed, MicroBatcher

T = TypeVar("T")


class Recorder:
    """texts -> (logits, probabilities): (B, 2) rows [len(text), position in batch], and the same rows
    times 10; records batch sizes and the calling thread.

    Raises `RuntimeError` for any batch containing the text "boom".
    """

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: list[int] = []

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(list(texts))
        self.threads.append(threading.get_ident())
        if "boom" in texts:
            raise RuntimeError("model exploded")
        rows = np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)  # (B, 2)
        return rows, rows * 10

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def run(fn: Recorder, body: Callable[[MicroBatcher], Awaitable[T]], max_batch: int = 4) -> T:
    """Runs `body(batcher)` on a fresh event loop and always closes the batcher."""

    async def main() -> T:
        batcher = MicroBatcher(fn, max_batch=max_batch, max_wait=0.05, name="test")
        try:
            return await asyncio.wait_for(body(batcher), timeout=10)
        finally:
            await batcher.close()

    return asyncio.run(main())


def own_rows(texts: list[str], result: np.ndarray) -> None:
    assert result.shape == (len(texts), 2)
    assert result[:, 0].tolist() == [len(t) for t in texts]


def test_concurrent_submits_are_grouped_and_everyone_gets_its_own_rows() -> None:
    fn = Recorder()
    texts = ["x" * (i + 1) for i in range(10)]  # distinct lengths: a row identifies its text

    async def body(batcher: MicroBatcher) -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit([t]) for t in texts))

    results = run(fn, body, max_batch=4)
    assert all(size <= 4 for size in fn.sizes)
    assert len(fn.batches) < 10
    assert sum(fn.sizes) == 10
    assert sorted(t for batch in fn.batches for t in batch) == sorted(texts)
    for text, result in zip(texts, results, strict=True):
        own_rows([text], result)


def test_each_request_gets_its_own_rows_of_the_logits_and_of_the_probabilities() -> None:
    fn = Recorder()
    requests = [["a", "bb"], ["ccc"], ["dddd", "eeeee", "ffffff"]]

    async def body(batcher: MicroBatcher) -> list[Batched]:
        return await asyncio.gather(*(batcher.submit_timed(r) for r in requests))

    results = run(fn, body, max_batch=8)
    for texts, result in zip(requests, results, strict=True):
        own_rows(texts, result.logits)
        own_rows(texts, result.probabilities / 10)


def test_multi_text_submits_keep_their_rows_in_order() -> None:
    fn = Recorder()
    requests = [["a", "bb", "ccc"], ["dddd"], ["eeeee", "ffffff"], ["g" * 7, "h" * 8, "i" * 9]]

    async def body(batcher: MicroBatcher) -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    results = run(fn, body, max_batch=6)
    assert all(size <= 6 for size in fn.sizes)
    for texts, result in zip(requests, results, strict=True):
        own_rows(texts, result)


def test_an_item_larger_than_the_remaining_room_opens_the_next_batch() -> None:
    fn = Recorder()

    async def body(batcher: MicroBatcher) -> list[np.ndarray]:
        requests = [["a", "bb", "ccc"], ["dddd", "eeeee"], ["f" * 6]]
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    results = run(fn, body, max_batch=4)
    # 3 + 2 > 4: the second request is carried into the next batch, whole, and the third joins it.
    assert fn.batches == [["a", "bb", "ccc"], ["dddd", "eeeee", "f" * 6]]
    own_rows(["a", "bb", "ccc"], results[0])
    own_rows(["dddd", "eeeee"], results[1])
    own_rows(["f" * 6], results[2])
    # Each request's slice starts at its own offset inside the batch.
    assert results[1][:, 1].tolist() == [0, 1]
    assert results[2][:, 1].tolist() == [2]


def test_sequential_submits_each_get_a_batch() -> None:
    fn = Recorder()

    async def body(batcher: MicroBatcher) -> list[np.ndarray]:
        return [await batcher.submit([t]) for t in ["a", "bb", "ccc"]]

    results = run(fn, body)
    assert fn.batches == [["a"], ["bb"], ["ccc"]]
    for text, result in zip(["a", "bb", "ccc"], results, strict=True):
        own_rows([text], result)


def test_a_failing_batch_fails_every_waiter_and_the_batcher_keeps_serving() -> None:
    fn = Recorder()

    async def body(batcher: MicroBatcher) -> tuple[list[np.ndarray | BaseException], np.ndarray]:
        # max_batch 3: ["a"], ["boom"], ["c"] share the failing batch; ["dd"] is in the next one.
        first = await asyncio.gather(
            *(batcher.submit([t]) for t in ["a", "boom", "c", "dd"]), return_exceptions=True
        )
        later = await batcher.submit(["later"])
        return first, later

    first, later = run(fn, body, max_batch=3)
    assert fn.batches[0] == ["a", "boom", "c"]
    for outcome in first[:3]:
        assert isinstance(outcome, RuntimeError)
        assert str(outcome) == "model exploded"
    assert isinstance(first[3], np.ndarray)
    own_rows(["dd"], first[3])
    own_rows(["later"], later)


def test_a_failure_propagates_to_a_single_waiter() -> None:
    fn = Recorder()

    async def body(batcher: MicroBatcher) -> None:
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit(["boom"])
        own_rows(["ok"], await batcher.submit(["ok"]))

    run(fn, body)


def test_the_function_runs_off_the_event_loop_thread() -> None:
    fn = Recorder()

    async def body(batcher: MicroBatcher) -> int:
        await asyncio.gather(*(batcher.submit([t]) for t in ["a", "b", "c", "d", "e", "f"]))
        await batcher.submit(["g"])
        return threading.get_ident()

    loop_thread = run(fn, body, max_batch=2)
    assert loop_thread not in fn.threads
    # One worker thread per model: a model never runs two batches at once.
    assert len(set(fn.threads)) == 1


def test_observe_sees_each_batch_size() -> None:
    fn = Recorder()
    observed: list[int] = []

    async def main() -> None:
        batcher = MicroBatcher(fn, max_batch=4, max_wait=0.05, observe=observed.append)
        try:
            await asyncio.wait_for(asyncio.gather(*(batcher.submit([str(i)]) for i in range(6))), timeout=10)
        finally:
            await batcher.close()

    asyncio.run(main())
    assert observed == fn.sizes
    assert sum(observed) == 6


def test_a_cancelled_waiter_does_not_break_the_others() -> None:
    fn = Gated()

    async def main() -> np.ndarray:
        batcher = MicroBatcher(fn, max_batch=4, max_wait=0.0)
        try:
            busy = asyncio.ensure_future(batcher.submit(["busy"]))
            while not fn.batches:  # "busy" is on the model's thread: what follows queues behind it
                await asyncio.sleep(0.001)
            doomed = asyncio.ensure_future(batcher.submit(["doomed"]))
            await asyncio.sleep(0)  # let it enqueue
            doomed.cancel()
            kept = asyncio.ensure_future(batcher.submit(["kept"]))
            await asyncio.sleep(0)
            fn.gate.set()
            await busy
            return await asyncio.wait_for(kept, timeout=10)
        finally:
            fn.gate.set()
            await batcher.close()

    own_rows(["kept"], asyncio.run(main()))
    assert fn.batches == [["busy"], ["kept"]]  # the cancelled request is dropped before the model runs


class Gated(Recorder):
    """A Recorder whose batches wait for `gate`: requests queue behind the first until it opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = super().__call__(texts)
        self.gate.wait(10)
        return rows


class Slow(Recorder):
    """A Recorder whose batches each take `seconds`: requests queue while one runs."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = super().__call__(texts)
        time.sleep(self.seconds)
        return rows


def test_closing_fails_every_unanswered_request_instead_of_leaving_it_hanging() -> None:
    fn = Slow(0.3)

    async def main() -> tuple[np.ndarray | BaseException, ...]:
        batcher = MicroBatcher(fn, max_batch=1, max_wait=0.0)
        answered = await batcher.submit(["answered"])
        running = asyncio.ensure_future(batcher.submit(["running"]))
        await asyncio.sleep(0.05)  # "running" is on the model's thread
        waiting = asyncio.ensure_future(batcher.submit(["waiting"]))
        await asyncio.sleep(0)
        await batcher.close()
        late = asyncio.ensure_future(batcher.submit(["late"]))
        gathered = asyncio.gather(running, waiting, late, return_exceptions=True)
        return (answered, *await asyncio.wait_for(gathered, timeout=10))

    answered, *unanswered = asyncio.run(main())
    own_rows(["answered"], answered)
    assert [type(outcome) for outcome in unanswered] == [BatcherClosed] * 3
    assert fn.batches == [["answered"], ["running"]]


def test_the_model_goes_from_batch_to_batch_while_the_event_loop_is_busy() -> None:
    """The model's thread takes the next batch itself: a loop busy with other requests (here: blocked)
    does not leave the model idle between batches."""
    fn = Counting(3)

    async def main() -> tuple[int, list[np.ndarray]]:
        batcher = MicroBatcher(fn, max_batch=1, max_wait=0.0)
        try:
            waiting = [asyncio.ensure_future(batcher.submit([t])) for t in ["a", "bb", "ccc"]]
            await asyncio.sleep(0)  # all three queued
            fn.reached.wait(10)  # the event loop is blocked: no callback of the batcher's runs meanwhile
            ran_meanwhile = len(fn.batches)
            return ran_meanwhile, await asyncio.wait_for(asyncio.gather(*waiting), timeout=10)
        finally:
            await batcher.close()

    ran_meanwhile, results = asyncio.run(main())
    assert ran_meanwhile == 3
    for text, result in zip(["a", "bb", "ccc"], results, strict=True):
        own_rows([text], result)


class Counting(Recorder):
    """A Recorder that sets `reached` once it has run `batches` batches."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.wanted = batches
        self.reached = threading.Event()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = super().__call__(texts)
        if len(self.batches) >= self.wanted:
            self.reached.set()
        return rows
