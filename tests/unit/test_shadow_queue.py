"""The shadow queues' two lanes: room kept for a rollout's candidate, and its items taken first."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from gateway.shadow.queue import FavouredAsyncQueue, default_reserve

# An operation: ("offer", favoured) or ("take", None).
operations = st.lists(
    st.one_of(st.tuples(st.just("offer"), st.booleans()), st.tuples(st.just("take"), st.none())),
    max_size=60,
)


@given(operations, st.integers(1, 9))
def test_admission_and_order_follow_the_two_lane_rule(
    ops: list[tuple[str, bool | None]], maxsize: int
) -> None:
    """Against a reference model: an other item is refused once the queue holds maxsize − reserve
    items, a favoured one only when it is full; takes return favoured items first, each lane FIFO."""
    q: FavouredAsyncQueue[tuple[bool, int]] = FavouredAsyncQueue(maxsize)
    reserve = default_reserve(maxsize)
    favoured: list[tuple[bool, int]] = []
    others: list[tuple[bool, int]] = []
    for n, (op, flag) in enumerate(ops):
        if op == "offer":
            assert flag is not None
            size = len(favoured) + len(others)
            expected = size < (maxsize if flag else maxsize - reserve)
            assert q.offer((flag, n), favoured=flag) is expected
            if expected:
                (favoured if flag else others).append((flag, n))
        elif favoured or others:
            assert q.get_nowait() == (favoured.pop(0) if favoured else others.pop(0))
        assert q.qsize() == len(favoured) + len(others)


def test_reserve_is_a_quarter_and_leaves_other_items_some_room() -> None:
    assert [default_reserve(n) for n in (1, 2, 3, 4, 8, 64, 1024)] == [0, 1, 1, 1, 2, 16, 256]


def test_async_queue_waits_for_an_item_and_joins_when_all_are_done() -> None:
    async def scenario() -> list[str]:
        q: FavouredAsyncQueue[str] = FavouredAsyncQueue(8)
        taken: list[str] = []

        async def worker() -> None:
            while True:
                taken.append(await q.get())
                q.task_done()

        task = asyncio.create_task(worker())
        await asyncio.sleep(0)  # the worker now waits on an empty queue
        for item, favoured in (("stable-1", False), ("stable-2", False), ("candidate", True)):
            assert q.offer(item, favoured)
        await asyncio.wait_for(q.join(), 5)
        task.cancel()
        return taken

    # The worker was woken by the first item but ran after all three were queued: candidate first.
    assert asyncio.run(scenario()) == ["candidate", "stable-1", "stable-2"]
