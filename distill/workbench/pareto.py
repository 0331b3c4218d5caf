"""The Pareto frontier of a sweep's points (pure): the points no other point beats on every count at
once — higher quality (agreement or accuracy), lower p50 latency, smaller size.

A point is *dominated* when another is at least as good on every objective and strictly better on
one. Points with equal figures do not dominate each other, so both stay on the frontier: which of two
identical students to serve is not the frontier's call. A point missing a figure (NaN or absent) is
left off: it was not measured, and an unmeasured point is not optimal.

>>> rows = [
...     {"id": "a", "agreement": 0.90, "p50_ms": 1.0, "size_mb": 10},
...     {"id": "b", "agreement": 0.85, "p50_ms": 0.5, "size_mb": 5},   # faster and smaller: kept
...     {"id": "c", "agreement": 0.84, "p50_ms": 0.6, "size_mb": 6},   # b beats it on all three
...     {"id": "d", "agreement": 0.95, "p50_ms": 2.0, "size_mb": 20},  # the best agreement: kept
... ]
>>> [r["id"] for r in frontier(rows, "agreement")]
['a', 'b', 'd']
>>> dominates((-0.85, 0.5, 5), (-0.84, 0.6, 6)), dominates((-0.9, 1.0, 10), (-0.9, 1.0, 10))
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

COSTS = ("p50_ms", "size_mb")  # minimised
QUALITIES = ("agreement", "accuracy")  # the metric maximised: one at a time

Row = TypeVar("Row", bound=Mapping[str, Any])


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` is no worse than `b` anywhere and better somewhere (every objective minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def objectives(
    row: Mapping[str, Any], quality: str, costs: Sequence[str] = COSTS
) -> tuple[float, ...] | None:
    """The row's objectives, all to minimise (quality negated); None when any is missing or NaN."""
    values = [row.get(quality), *(row.get(cost) for cost in costs)]
    if any(not isinstance(v, int | float) or math.isnan(v) for v in values):
        return None
    quality_value, *cost_values = (float(v) for v in values)  # type: ignore[arg-type]
    return (-quality_value, *cost_values)


def frontier(rows: Sequence[Row], quality: str, costs: Sequence[str] = COSTS) -> list[Row]:
    """The non-dominated rows, in their given order. Quadratic, which is nothing at sweep sizes (tens
    of points)."""
    measured = [(row, vector) for row in rows if (vector := objectives(row, quality, costs)) is not None]
    # A row never dominates itself (nothing is strictly better), so no need to skip it.
    return [row for row, vector in measured if not any(dominates(other, vector) for _, other in measured)]


def frontier_ids(rows: Sequence[Mapping[str, Any]], quality: str, costs: Sequence[str] = COSTS) -> set[str]:
    """The `id`s of the frontier rows."""
    return {str(row["id"]) for row in frontier(rows, quality, costs)}
