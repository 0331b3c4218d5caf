"""How much CPU the /classify shadow teacher may use: a floor under load, the idle cores when there are.

A fixed budget (0.25 of a core by default) bounds what the shadow costs a busy gateway's p99, but on a
quiet machine it leaves cores idle while the canary waits for compared samples: in the BBC loop e2e
test a 50% step needed 72 s to gather 166 comparisons at 0.25 core, and 8 s without the budget. So
the budget grows into what the machine leaves idle, minus a headroom kept for serving's bursts, and
falls back to the floor as soon as serving takes the cores back. SCHED_IDLE still applies on top.

    >>> shadow_budget(spare_cores=1.7, floor=0.25, headroom=0.5)  # quiet: up to a whole core
    1.0
    >>> shadow_budget(spare_cores=0.3, floor=0.25, headroom=0.5)  # busy: the floor
    0.25
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil


def pause_for_budget(cpu_seconds: float, max_cpu: float | None) -> float:
    """Seconds to wait after a batch that took `cpu_seconds` of CPU so the shadow averages at most
    `max_cpu` cores: busy for c, idle for c·(1/max_cpu − 1). No budget, or one of a core or more for a
    one-threaded teacher: no pause."""
    if max_cpu is None or max_cpu >= 1.0 or cpu_seconds <= 0.0:
        return 0.0
    return cpu_seconds * (1.0 / max_cpu - 1.0)


def shadow_budget(spare_cores: float | None, floor: float | None, headroom: float | None) -> float | None:
    """Cores the shadow may average over its next batches. `spare_cores`: what the machine left idle
    over the last interval plus what the shadow itself used (it would be idle without the shadow).
    Never below `floor` (the budget under load), never above one core (the teacher is one-threaded).
    No floor: no budget at all. No headroom or no measurement yet: the floor alone."""
    if floor is None:
        return None
    if headroom is None or spare_cores is None:
        return floor
    return min(1.0, max(floor, spare_cores - headroom))


def _idle_seconds() -> float:
    """Machine-wide idle CPU seconds since boot, all cores (iowait is idle to a CPU-bound teacher)."""
    times = psutil.cpu_times()
    return float(times.idle + getattr(times, "iowait", 0.0))


class SpareCpuMeter:
    """Cores the shadow could have had over the last interval of at least `interval_s`: idle cores
    machine-wide plus the shadow's own CPU (`add_own`). Refreshed at most once per interval."""

    def __init__(
        self,
        interval_s: float = 1.0,
        idle_seconds: Callable[[], float] = _idle_seconds,
        clock: Callable[[], float] = time.monotonic,
        cores: int | None = None,
    ) -> None:
        self.interval_s = interval_s
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._cores = cores or os.cpu_count() or 1
        self._since = clock()
        self._idle_since = idle_seconds()
        self._own = 0.0
        self._spare: float | None = None

    def add_own(self, cpu_seconds: float) -> None:
        self._own += cpu_seconds

    def spare_cores(self) -> float | None:
        """The last complete interval's spare cores; None until one interval has passed."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self.interval_s:
            idle = self._idle_seconds()
            spare = (idle - self._idle_since + self._own) / elapsed
            self._spare = min(float(self._cores), max(0.0, spare))
            self._since, self._idle_since, self._own = now, idle, 0.0
        return self._spare
