"""Every gateway process's live window, for the judge: what the local metric source adds to its own.

Each process serves a share of the traffic (`kdgate serve --workers N`, or replicas on one store), but a
live window (gateway/serving/window.py) holds only what its own process served. So each process
publishes, about once a second and off the event loop, what its window holds for the rollouts in
progress, into one document of the state store, `windows`, keyed by process:

    {"host:pid": {"pid": 4242, "host": "h", "at": <wall time>,
                  "rollouts": {"classify": {"since": <step_started_at>,
                                            "models": {"classify-student@2": {"requests": 812, …,
                                                                              "latency": {"171": 3, …}}}}}}}

- Per progressing rollout, the candidate's and the baseline's totals **since the step started**, not
  per-second buckets: the document stays O(processes × rollouts) however long a step dwells. A reader
  uses a process's sums only for the step it judges (the same `since`); a process that has not seen a
  new step yet (it follows the store every tick) counts for nothing until its next publish.
- Latencies as a histogram of log-spaced buckets (2% wide), so p99 merges across processes; the
  bucket's geometric middle stands for it (within 1%).
- Each publish is one atomic read-modify-write of the document (`Document.update`) that also drops
  the entries of processes gone (their pid, on this host) or silent for `STALE_S`; a reader skips
  them too. A process with no rollout in progress writes nothing.
- The reader (the controller's `LocalSource`) takes its own window from memory and skips its own
  entry: nothing is counted twice. With one process there is no other entry, and the figures are
  its window's exactly as they were.

Example::

    board = WindowBoard(store.document("windows"), window)
    board.publish(controller.active.values())   # every second, in a thread
    board.others(state)  # [{ref: published totals}, …]: the other live processes', for this step
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.serving.window import LiveWindow, Totals
from rollout.model import Phase, RolloutState
from statestore import Document

DOCUMENT = "windows"
STALE_S = 5.0  # a process silent this long is taken for gone (it publishes every PUBLISH_S)
PUBLISH_S = 1.0
LATENCY_BASE = 1.02  # histogram buckets: each 2% wider than the one below
COUNTS = ("requests", "errors", "compared", "disagreed", "kl_sum", "completions", "degenerate")
HOST = socket.gethostname()

Published = Mapping[str, Any]  # one model's published totals


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency: buckets are [1.02^i, 1.02^(i+1)) ms.

    >>> latency_bucket(1.0), latency_bucket(1.019), latency_bucket(1.021)
    (0, 0, 1)
    """
    return math.floor(math.log(max(ms, 1e-3), LATENCY_BASE))


def histogram(latencies_ms: Iterable[float]) -> Counter[int]:
    return Counter(latency_bucket(ms) for ms in latencies_ms)


def quantile(hist: Mapping[int, int], q: float = 0.99) -> float | None:
    """The q-quantile of a latency histogram (ms): the middle of the bucket holding rank q·(n−1), as
    numpy's default percentile ranks samples.

    >>> round(quantile(histogram([10.0] * 99 + [500.0])), 1)  # numpy: 14.9, between the two samples
    10.0
    >>> round(quantile(histogram(range(1, 1001))))  # numpy: 990.01
    993
    """
    n = sum(hist.values())
    if not n:
        return None
    rank, seen = q * (n - 1), 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return float(LATENCY_BASE ** (bucket + 0.5))
    raise AssertionError("unreachable: the last bucket holds rank n-1")


def encode(totals: Totals) -> dict[str, Any]:
    """One model's totals as published: the judge's counts and the latency histogram."""
    latency = {str(b): c for b, c in histogram(totals.latencies_ms).items()}
    return {name: getattr(totals, name) for name in COUNTS} | {"latency": latency}


def combine(own: Totals, published: Iterable[Published]) -> tuple[Totals, float | None]:
    """`own` (this process's window) plus other processes' published totals, and the p99 of all of
    their latencies (from the merged histogram). The latencies themselves are not kept.

    >>> mine = Totals(requests=2, latencies_ms=[5.0, 6.0])
    >>> total, p99 = combine(mine, [{"requests": 3, "latency": {"90": 3}}])
    >>> total.requests, round(p99, 1)
    (5.0, 6.0)
    """
    total = Totals(**{name: getattr(own, name) for name in COUNTS})
    hist = histogram(own.latencies_ms)
    for other in published:
        for name in COUNTS:
            setattr(total, name, getattr(total, name) + float(other.get(name, 0.0)))
        hist.update({int(b): int(c) for b, c in other.get("latency", {}).items()})
    return total, quantile(hist)


def snapshot(window: LiveWindow, rollouts: Iterable[RolloutState]) -> dict[str, Any]:
    """What this process publishes: per progressing rollout whose step the window covers, the
    candidate's and baseline's totals since the step started."""
    out: dict[str, Any] = {}
    for state in rollouts:
        if state.phase is not Phase.PROGRESSING or state.step_started_at < window.oldest_time():
            continue
        models = {
            ref: encode(window.totals(ref, since=state.step_started_at))
            for ref in (state.candidate, state.baseline)
        }
        out[state.task] = {"since": state.step_started_at, "models": models}
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def alive(entry: Mapping[str, Any], now: float) -> bool:
    """Whether a published entry is from a live process: it published lately, and on this host its pid
    is still there."""
    if now - float(entry.get("at", 0.0)) > STALE_S:
        return False
    return entry.get("host") != HOST or pid_alive(int(entry.get("pid", 0)))


class WindowBoard:
    """This process's entry of the `windows` document, and the other live processes' entries."""

    def __init__(
        self, document: Document, window: LiveWindow, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.document = document
        self.window = window
        self.me = f"{HOST}:{os.getpid()}"
        self._wall = wall_clock  # liveness is wall time, whatever clock the window's buckets read
        self._published = False  # whether the document holds an entry of ours

    def publish(self, rollouts: Iterable[RolloutState]) -> None:
        """Replaces this process's entry (blocking: call it off the loop); with no rollout in progress,
        removes it once and then writes nothing."""
        mine = snapshot(self.window, rollouts)
        if not mine and not self._published:
            return
        now = self._wall()
        entry = {"pid": os.getpid(), "host": HOST, "at": now, "rollouts": mine}

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            kept = {key: e for key, e in doc.items() if key != self.me and alive(e, now)}
            return kept | ({self.me: entry} if mine else {})

        self.document.update(change)
        self._published = bool(mine)

    def others(self, state: RolloutState) -> list[dict[str, Published]]:
        """Per other live process that published for this step of `state`'s rollout: its totals by model."""
        now = self._wall()
        found = []
        for key, entry in self.document.read().items():
            if key == self.me or not alive(entry, now):
                continue
            rollout = entry.get("rollouts", {}).get(state.task)
            if rollout is not None and rollout.get("since") == state.step_started_at:
                found.append(rollout.get("models", {}))
        return found
