"""The part of the shadow log a running re-distillation reads, kept out of retention until the run ends.

One object, built first by `GatewayState.build`: the log writers' retention reads it (it is their
`protect_after` callable), the continual loop's host sets it when a run starts and clears it at its end.

>>> protection = ShadowProtection()
>>> protection() is None
True
>>> protection.since = 1_700_000_000.0  # a run reads records from then on
>>> protection()
1700000000.0
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShadowProtection:
    since: float | None = None  # epoch seconds; segments that may hold records from then on are kept

    def __call__(self) -> float | None:
        return self.since
