"""A thread below serving priority that runs, one at a time, the calls an asyncio worker hands it.

Why not `asyncio.to_thread`: the default executor's threads are shared with the request path, and a
thread's priority (Linux schedules threads separately) would stay lowered for whatever runs on it
next. Why not a one-thread `ThreadPoolExecutor`: its thread is joined at interpreter exit, so a long
teacher pass still running past the graceful stop would hold the exit; this one is a daemon.

>>> thread = NicedThread("example", nice=0)  # starts on its first call
>>> asyncio.run(thread.run(sum, [1, 2]))
3
>>> thread.stop(timeout=5.0)  # lets the call in hand finish, then ends the thread
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from gateway.shadow.teacher_process import lower_priority

T = TypeVar("T")


class NicedThread:
    def __init__(self, name: str, nice: int) -> None:
        self.nice = nice
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in this thread; cancelling the await drops a call not yet begun. From the event
        loop only (its first call starts the thread)."""
        if self._thread.ident is None:
            self._thread.start()
        done: Future[T] = Future()
        self._calls.put((fn, args, done))
        return await asyncio.wrap_future(done)

    def stop(self, timeout: float) -> None:
        """Blocks until the call in hand (if any) has finished, at most `timeout` seconds."""
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join(timeout)

    def _serve(self) -> None:
        lower_priority(self.nice)
        while (call := self._calls.get()) is not None:
            fn, args, done = call
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn(*args))
            except BaseException as exc:  # handed back to the awaiting worker, which decides
                done.set_exception(exc)
