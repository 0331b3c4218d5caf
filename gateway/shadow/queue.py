"""The shadow's bounded queues: the candidate of a rollout is scored first and has room kept for it.

A rollout's judge reads only the candidate's comparisons; the other students' feed only the shadow
log. With a plain FIFO, once the teacher falls behind (a busy gateway, the teacher's CPU budget) the
queue is full of the stable model's items, and a 5% canary gets ~5% of the comparisons the teacher
can make: its step waits for `min_samples` up to 20x longer than the teacher's capacity needs.
So each queue has two lanes:

- favoured items (the candidates of active rollouts) are taken first, first in first out;
- other items fill the queue only up to `maxsize - reserve`: the last `reserve` places are kept for
  favoured items, so a backlog of stable traffic alone never drops the candidate's (a favoured item
  is dropped only when the whole queue is full).

asyncio's queue lets a subclass replace its storage (as its PriorityQueue does), so waiting, `join()`
and `task_done()` stay its own; only the storage and `offer()` are written here.

>>> q = FavouredAsyncQueue(maxsize=4, reserve=1)
>>> [q.offer(item, favoured=False) for item in "abcd"]
[True, True, True, False]
>>> q.offer("x", favoured=True), q.get_nowait(), q.get_nowait()
(True, 'x', 'a')
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def default_reserve(maxsize: int) -> int:
    """A quarter of the queue (at least one place when there are two) for the rollout's candidate."""
    return maxsize // 4 if maxsize >= 4 else min(1, maxsize - 1)


class TwoLanes(Generic[T]):
    """Queue storage: `append((favoured, item))`, `popleft()` → the oldest favoured item, else the
    oldest other one. The two deque methods are the only ones the stdlib queues call."""

    def __init__(self) -> None:
        self.favoured: deque[T] = deque()
        self.others: deque[T] = deque()

    def append(self, entry: tuple[bool, T]) -> None:
        favoured, item = entry
        (self.favoured if favoured else self.others).append(item)

    def popleft(self) -> T:
        return self.favoured.popleft() if self.favoured else self.others.popleft()

    def __len__(self) -> int:
        return len(self.favoured) + len(self.others)

    def __repr__(self) -> str:
        return f"TwoLanes(favoured={len(self.favoured)}, others={len(self.others)})"


def _admits(qsize: int, maxsize: int, reserve: int, favoured: bool) -> bool:
    return qsize < (maxsize if favoured else maxsize - reserve)


class FavouredAsyncQueue(asyncio.Queue[Any], Generic[T]):
    """For the shadow pipeline's asyncio workers: `offer` on the event loop, never blocks; `get()`
    returns the items offered."""

    def __init__(self, maxsize: int, reserve: int | None = None) -> None:
        super().__init__(maxsize)
        self.reserve = default_reserve(maxsize) if reserve is None else reserve

    def _init(self, maxsize: int) -> None:
        self._queue: Any = TwoLanes()

    def offer(self, item: T, favoured: bool) -> bool:
        """Queues `item` unless its lane is full; False: dropped (the caller counts it)."""
        if not _admits(self.qsize(), self.maxsize, self.reserve, favoured):
            return False
        self.put_nowait((favoured, item))
        return True
