"""The part of the shadow log running re-distillations read, kept out of retention until they end.

A run holds the log from the earliest record it reads (`since`) until it ends. The holds live in the
state store's `shadow_protection` document, so every gateway sharing the store keeps them, not only the
one whose loop runs: replicas write their segments into the same bucket, and each one's retention
deletes the oldest segments of the whole log (distill/shadowlog/retention.py). A run from `kdgate
distill watch`, a process of its own, takes its hold through a gateway's admin API.

A hold expires `ttl_s` after it was taken, so a loop killed mid-run (nothing released its hold) delays
retention by at most that long.

Example::

    protection = ShadowProtection(store.document("shadow_protection"))
    protection.hold("loop@gw-1", since=1_700_000_000.0)     # a run reads the log from then on
    protection()                                             # 1700000000.0: what retention keeps
    protection.release("loop@gw-1")                          # the run has ended
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from statestore import Document

HOLD_TTL_S = 6 * 3600.0  # longer than any re-distillation run; bounds a hold nobody released


def protected_since(holds: Mapping[str, Mapping[str, Any]], now: float) -> float | None:
    """The earliest `since` of the holds that have not expired at `now`; None when none is left.

    >>> holds = {"a": {"since": 50.0, "expires": 200.0}, "b": {"since": 10.0, "expires": 90.0}}
    >>> protected_since(holds, now=80.0), protected_since(holds, now=100.0), protected_since(holds, 300.0)
    (10.0, 50.0, None)
    """
    live = [float(h["since"]) for h in holds.values() if float(h["expires"]) > now]
    return min(live, default=None)


class ShadowProtection:
    """The log writers' `protect_after` callable (read after every flush: served from the document's
    memory), and the holds the continual loop takes and releases."""

    def __init__(self, document: Document, clock: Callable[[], float] = time.time) -> None:
        self._doc = document
        self._clock = clock

    def __call__(self) -> float | None:
        return protected_since(self._doc.read(), self._clock())

    def holds(self) -> dict[str, dict[str, float]]:
        return {holder: dict(hold) for holder, hold in self._doc.read().items()}

    def hold(self, holder: str, since: float, ttl_s: float = HOLD_TTL_S) -> None:
        """Keeps segments that may hold records from `since` on until `holder` releases them (or
        `ttl_s` has passed). Holding again replaces the holder's hold."""
        now = self._clock()

        def add(holds: dict[str, Any]) -> dict[str, Any]:
            fresh = {h: v for h, v in holds.items() if float(v["expires"]) > now}  # drop the expired
            return fresh | {holder: {"since": since, "expires": now + ttl_s}}

        self._doc.update(add)

    def release(self, holder: str) -> None:
        self._doc.update(lambda holds: {h: v for h, v in holds.items() if h != holder})
