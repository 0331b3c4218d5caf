"""Traffic weights per task: validation (pure) and the persisted store."""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.errors import InvalidInput
from statestore import Document


def validate_weights(
    task: str, weights: Mapping[str, object], models_of: Mapping[str, str]
) -> dict[str, int]:
    """Checks a requested split; `models_of` maps every loaded model ref to its task.

    Raises `InvalidInput` naming the offending model or rule; returns the split with integer weights.
    """
    if not weights:
        raise InvalidInput("weights must name at least one model", field="weights")
    clean: dict[str, int] = {}
    for ref, weight in weights.items():
        if ref not in models_of:
            raise InvalidInput(f"unknown model {ref!r}; loaded: {sorted(models_of)}", field=f"weights.{ref}")
        if models_of[ref] != task:
            raise InvalidInput(
                f"model {ref!r} serves task {models_of[ref]!r}, not {task!r}", field=f"weights.{ref}"
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not _is_whole_number(weight):
            raise InvalidInput(
                f"weight of {ref!r} must be an integer, got {weight!r}", field=f"weights.{ref}"
            )
        if weight < 0:
            raise InvalidInput(f"weight of {ref!r} must be ≥ 0, got {weight}", field=f"weights.{ref}")
        clean[ref] = int(weight)
    total = sum(clean.values())
    if total != 100:
        raise InvalidInput(f"weights must sum to 100, got {total}", field="weights")
    return {ref: w for ref, w in clean.items() if w > 0}


def _is_whole_number(value: float) -> bool:
    return isinstance(value, int) or (math.isfinite(value) and value.is_integer())


class TrafficStore:
    """Weights per task in the state store's `traffic` document, shared by every gateway on the store:
    a change made through one is served by the others within a second (statestore/)."""

    def __init__(self, document: Document) -> None:
        self._doc = document

    def get(self, task: str) -> dict[str, int]:
        return dict(self._doc.read().get(task, {}))

    def all(self) -> dict[str, dict[str, int]]:
        return {task: dict(w) for task, w in self._doc.read().items()}

    def set(self, task: str, weights: dict[str, int]) -> None:
        self._doc.update(lambda doc: doc | {task: dict(weights)})
