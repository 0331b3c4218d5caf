"""When the continual loop re-distils (pure): enough new shadow records, or drift on recent traffic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TriggerConfig:
    min_new_records: int = 2000  # shadow records since the last run that justify a new student
    drift: float = 0.05  # ...or: live disagreement this much above the serving student's offline figure
    min_drift_samples: int = 200  # compared samples needed before drift is believed


@dataclass(frozen=True)
class Trigger:
    fire: bool
    reason: str


def should_redistill(
    new_records: int,
    live_disagreement: float | None,
    compared: int,
    offline_disagreement: float | None,
    config: TriggerConfig,
) -> Trigger:
    """Whether to re-distil now, and why.

    >>> should_redistill(2500, None, 0, None, TriggerConfig()).fire
    True
    """
    if new_records >= config.min_new_records:
        return Trigger(True, f"{new_records} new shadow records (≥ {config.min_new_records})")
    if (
        live_disagreement is not None
        and offline_disagreement is not None
        and compared >= config.min_drift_samples
        and live_disagreement - offline_disagreement >= config.drift
    ):
        return Trigger(
            True,
            f"drift: live disagreement {live_disagreement:.3f} vs offline "
            f"{offline_disagreement:.3f} (≥ +{config.drift})",
        )
    return Trigger(False, f"{new_records} new records; no drift")
