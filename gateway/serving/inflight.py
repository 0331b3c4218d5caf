"""Requests in flight, and the share of wall time the gateway had at least one: how busy serving is.

Touched only on the event loop thread (the handlers enter and leave), so no lock. The shadow's CPU
budget reads `busy_share()` to grow into the time serving leaves quiet (gateway/shadow/budget.py).

    >>> t = [0.0]; load = InFlight(interval_s=1.0, clock=lambda: t[0])
    >>> load.enter(); t[0] = 0.25; load.leave(); t[0] = 1.0
    >>> load.busy_share()
    0.25
"""

from __future__ import annotations

import time
from collections.abc import Callable


class InFlight:
    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = 0
        self.interval_s = interval_s
        self._clock = clock
        self._since = clock()  # start of the interval being measured
        self._busy = 0.0  # busy seconds of the interval's finished busy periods
        self._busy_from = 0.0  # start of the busy period under way (count > 0)
        self._share: float | None = None

    def enter(self) -> None:
        if self.count == 0:
            self._busy_from = self._clock()
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._busy += self._clock() - self._busy_from

    def busy_share(self) -> float | None:
        """Share of the last whole interval (at least `interval_s`) with a request in flight; None
        before the first interval has passed."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self.interval_s:
            busy = self._busy + (now - self._busy_from if self.count else 0.0)
            self._share = min(1.0, busy / elapsed)
            self._since, self._busy = now, 0.0
            if self.count:
                self._busy_from = now  # the rest of this busy period counts in the next interval
        return self._share
