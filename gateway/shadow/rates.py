"""How much of each student's traffic the teacher shadows: configured at start, changed at run time.

The rate of a model is, first found: the override an operator set (`PUT /admin/shadow/{task}`, kept in
the state store's `shadow_rates` document, so a restart keeps it), its entry in `settings.shadow_rates`, then
`settings.shadow_rate`. Why at run time: when the teacher is short of capacity (a big canary, a slow
teacher) an operator turns shadowing down without a restart, and turns it up again for a rollout that
needs its samples sooner. The bench uses it too: shadow at 0% and 100% alternate in one gateway process,
so the cost of shadowing is not lost in the difference between two processes (loadtests/bench_shadow.py).

Example::

    rates = ShadowRates(store.document("shadow_rates"), settings)
    rates.update({"classify-student@1": 0.25})
    rates.rate("classify-student@1")     # 0.25, also after a restart
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.errors import InvalidInput
from gateway.settings import Settings
from statestore import Document


def validate_rates(
    task: str, rates: Mapping[str, object], students_of: Mapping[str, str]
) -> dict[str, float | None]:
    """Checks a requested change; `students_of` maps every loaded student ref to its task.

    A rate is a number in [0, 1]; None drops the override (back to the configured rate). The teacher
    has no rate: what it serves is logged as it is, with no second call. Raises `InvalidInput` naming
    the model at fault.
    """
    if not rates:
        raise InvalidInput("rates must name at least one model", field="rates")
    clean: dict[str, float | None] = {}
    for ref, rate in rates.items():
        where = f"rates.{ref}"
        if ref not in students_of:
            raise InvalidInput(f"no loaded student {ref!r}; loaded: {sorted(students_of)}", field=where)
        if students_of[ref] != task:
            raise InvalidInput(f"model {ref!r} serves task {students_of[ref]!r}, not {task!r}", field=where)
        if rate is None:
            clean[ref] = None
            continue
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
            raise InvalidInput(f"rate of {ref!r} must be a number or null, got {rate!r}", field=where)
        if not 0.0 <= rate <= 1.0:
            raise InvalidInput(f"rate of {ref!r} must be between 0 and 1, got {rate}", field=where)
        clean[ref] = float(rate)
    return clean


class ShadowRates:
    """Read on the request path (a dict lookup, no lock: a change swaps the whole dict)."""

    def __init__(self, document: Document, settings: Settings) -> None:
        self.settings = settings
        self._doc = document  # shared by the gateways on the store

    def rate(self, model: str) -> float:
        """The share of `model`'s requests to shadow."""
        override = self._doc.read().get(model)
        if override is not None:
            return override
        return self.settings.shadow_rates.get(model, self.settings.shadow_rate)

    def overrides(self) -> dict[str, float]:
        return dict(self._doc.read())

    def update(self, changes: Mapping[str, float | None]) -> dict[str, float]:
        """Applies validated changes (None drops an override), persists them, returns the overrides."""

        def apply(overrides: dict[str, float]) -> dict[str, float]:
            overrides |= {k: v for k, v in changes.items() if v is not None}
            for ref in [k for k, v in changes.items() if v is None]:
                overrides.pop(ref, None)
            return overrides

        return dict(self._doc.update(apply))
