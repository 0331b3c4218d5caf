"""Live in-process windows: per model counts and sums over the last N seconds.

The rollout's local metric source reads these (no Prometheus needed on one machine). Events are kept
in one-second buckets, so memory is bounded by the horizon, not by traffic.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

MAX_LATENCIES_PER_SECOND = 2000  # per model: bounds memory; p99 of a busy second is still well estimated


@dataclass
class Totals:
    """Sums over a window for one model."""

    requests: float = 0.0  # answered by this model (or routed to it and fallen back)
    errors: float = 0.0  # errors + fallbacks charged to this model
    eligible: float = 0.0  # student-served requests that could have been shadowed
    compared: float = 0.0  # shadow comparisons done
    disagreed: float = 0.0  # comparisons whose top-1 differed from the teacher's
    kl_sum: float = 0.0  # Σ KL(teacher ‖ student) over comparisons
    dropped: float = 0.0  # shadow items dropped on a full queue
    completions: float = 0.0  # /generate: shadowed completions (compared etc. count tokens there)
    degenerate: float = 0.0  # /generate: of which repetition loops
    latencies_ms: list[float] = field(default_factory=list)  # answer times of requests routed to it

    def add(self, other: Totals) -> None:
        for f in fields(self):
            if f.name != "latencies_ms":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.latencies_ms.extend(other.latencies_ms)

    def p99_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None


class LiveWindow:
    """Per-model totals in one-second buckets over the last `horizon_seconds`; thread-safe.

    >>> window = LiveWindow(clock=lambda: 1000.0)
    >>> window.add("classify-student@1", compared=1, disagreed=0, kl_sum=0.02)
    >>> window.totals("classify-student@1", seconds=60).compared
    1.0
    """

    def __init__(self, horizon_seconds: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self.horizon = horizon_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, deque[tuple[int, Totals]]] = defaultdict(deque)

    def add(self, model: str, latency_ms: float | None = None, **amounts: float) -> None:
        second = int(self._clock())
        with self._lock:
            buckets = self._buckets[model]
            if not buckets or buckets[-1][0] != second:
                buckets.append((second, Totals()))
            bucket = buckets[-1][1]
            for name, amount in amounts.items():
                setattr(bucket, name, getattr(bucket, name) + amount)
            if latency_ms is not None and len(bucket.latencies_ms) < MAX_LATENCIES_PER_SECOND:
                bucket.latencies_ms.append(latency_ms)
            while buckets and buckets[0][0] < second - self.horizon:
                buckets.popleft()

    def totals(self, model: str, seconds: float | None = None, since: float | None = None) -> Totals:
        """Sums over the last `seconds` (or since the clock time `since`; default: the whole horizon)."""
        now = self._clock()
        start = since if since is not None else now - (seconds if seconds is not None else self.horizon)
        result = Totals()
        with self._lock:
            for second, bucket in self._buckets.get(model, ()):
                if second >= int(start):
                    result.add(bucket)
        return result

    def oldest_time(self) -> float:
        """Start of the horizon: totals since an earlier time would be missing what was evicted."""
        return self._clock() - self.horizon

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._buckets)
