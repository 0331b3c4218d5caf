"""The shadow teacher in a process of its own, below serving priority.

Why a process, not a thread: a thread shares the serving process's GIL, and an idle-priority thread
that holds the GIL (tokenising, copying arrays, ONNX Runtime's Python wrapper) while it is preempted
makes the event loop wait on it. In its own process the teacher shares only the CPU; SCHED_IDLE and
nice keep it off a core that serving wants, and the threads it starts (the tokenizer's pool) inherit
that. A crash in native code takes down the shadow, not serving.

Why a plain child (`python -m gateway.shadow.teacher_process`) and not multiprocessing: spawn re-imports the
parent's main module, here the whole `kdgate` CLI (~5 s); this child imports only what an ONNX runner
needs (~0.2 s). It talks over its stdin/stdout: length-prefixed pickles, one request at a time, between
two processes of ours. It exits when its stdin closes (and ignores SIGINT and SIGTERM sent to the whole
process group), so a gateway killed with -9 leaves no orphan and a graceful stop can still drain.

Example::

    teacher = ShadowTeacher(registry, nice=10, idle_class=True, prefer_onnx=True)
    logits, cpu_s = await teacher.score("classify-teacher@1", ["what a day"])   # (1, C), CPU seconds
    await teacher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from distill.classify.runner import Runner, load_runner
from distill.registry import Registry

HEADER = 8  # bytes of big-endian length before each pickle
STOP_TIMEOUT_S = 30.0  # a close waits this long for the worker to finish its batch and exit


class ShadowTeacherError(RuntimeError):
    """The shadow teacher failed on a batch, or its process died; the next batch starts a new one."""


def lower_priority(nice: int, idle_class: bool = False) -> None:
    """Lowers the calling thread (Linux schedules threads separately); threads it starts inherit it.
    SCHED_IDLE: the thread runs only on a core serving leaves idle, and what it cannot keep up with is
    dropped from the bounded shadow queue and counted, as the observed shadow rate shows."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        if idle_class and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def cpu_timed(
    fn: Callable[[list[str]], np.ndarray],
    texts: list[str],
    cpu_clock: Callable[[], float] = time.process_time,
) -> tuple[np.ndarray, float]:
    """`fn(texts)` and the CPU seconds spent on it by `cpu_clock`: by default this process's CPU time
    (the tokenizer's threads included), which a wait does not advance, so waiting costs no budget."""
    started = cpu_clock()
    return fn(texts), cpu_clock() - started


class ShadowTeacher:
    """The parent's side: starts the worker on first use, sends it batches, restarts it after a death."""

    def __init__(self, registry: Registry, nice: int, idle_class: bool, prefer_onnx: bool) -> None:
        self.registry = registry  # pickled to the worker as is: constructing one there would sweep staging
        self.nice, self.idle_class, self.prefer_onnx = nice, idle_class, prefer_onnx
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # one request on the pipe at a time

    async def score(self, ref: str, texts: list[str]) -> tuple[np.ndarray, float]:
        """Teacher logits (B, C) for `texts`, and the worker's CPU seconds for them."""
        logits, cpu_s = await self._call(("score", self.registry, ref, self.prefer_onnx, texts))
        return logits, cpu_s

    async def worker_pid(self) -> int:
        """The worker's process id once it answers, starting it if it is not running: awaiting this at
        start-up takes the worker's start (an interpreter and its imports) off the first batch."""
        pid: int = await self._call(("pid",))
        return pid

    async def close(self) -> None:
        """Waits for a batch in hand to come back, then stops the worker."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.returncode is not None:
                return
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: the worker exits
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _start(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                str(self.nice),
                "1" if self.idle_class else "0",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,  # stderr: the gateway's, so the worker's tracebacks show
            )
        return self._proc

    async def _call(self, request: tuple[Any, ...]) -> Any:
        async with self._lock:
            proc = await self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.write(len(data).to_bytes(HEADER, "big") + data)
                await proc.stdin.drain()
                size = int.from_bytes(await proc.stdout.readexactly(HEADER), "big")
                ok, value = pickle.loads(await proc.stdout.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                code = await self._discard(proc)
                raise ShadowTeacherError(f"the shadow teacher's process died (exit code {code})") from exc
            except asyncio.CancelledError:  # a reply may still come: the pipe is out of step for good
                await asyncio.shield(self._discard(proc))
                raise
            if not ok:
                raise ShadowTeacherError(f"the shadow teacher failed:\n{value}")
            return value

    async def _discard(self, proc: asyncio.subprocess.Process) -> int:
        """Kills `proc` (the next call starts a new worker) and returns its exit code."""
        if self._proc is proc:
            self._proc = None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()


# The worker process --------------------------------------------------------------------------------


MAX_TEACHERS = 4  # loaded at once: one per classify task in use, the least recently used dropped first


def _handle(request: tuple[Any, ...], runners: dict[str, Runner]) -> Any:
    kind, *args = request
    if kind == "pid":
        return os.getpid()
    if kind == "score":
        registry, ref, prefer_onnx, texts = args
        runner = runners.pop(ref, None) or load_runner(registry, ref, threads=1, prefer_onnx=prefer_onnx)
        runners[ref] = runner  # the most recently used last
        while len(runners) > MAX_TEACHERS:  # a teacher swapped out is dropped with time
            runners.pop(next(iter(runners)))
        return cpu_timed(runner.predict_logits, texts)
    raise ValueError(f"unknown request {kind!r}")


def _serve(requests: BinaryIO, replies: BinaryIO) -> None:
    runners: dict[str, Runner] = {}
    while header := requests.read(HEADER):
        if len(header) < HEADER:
            return
        request = pickle.loads(requests.read(int.from_bytes(header, "big")))
        try:
            reply: tuple[bool, Any] = (True, _handle(request, runners))
        except Exception:
            reply = (False, traceback.format_exc())
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        replies.write(len(data).to_bytes(HEADER, "big") + data)
        replies.flush()


def main(argv: list[str]) -> None:
    nice, idle_class = int(argv[0]), argv[1] == "1"
    # Ctrl-C in a terminal and systemd's stop signal reach the whole process group: the gateway's
    # graceful stop still needs this worker to drain the queue. Its end is its stdin closing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    lower_priority(nice, idle_class)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (a library's) goes to stderr, not into the replies
    _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main(sys.argv[1:])
