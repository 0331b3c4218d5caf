"""The status file of a build of the default models: each step's state, what it registered or why it
failed, and the phase under way with its progress and ETA. The build child writes it (durably, at every
transition); the gateway's `GET /admin/build` and `kdgate models build-status` read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel

from distill.progress import Progress


class StepState(StrEnum):
    PENDING = "pending"
    BUILDING = "building"
    DONE = "done"
    FAILED = "failed"


class StepStatus(BaseModel):
    task: str
    role: str
    state: StepState = StepState.PENDING
    started_at: float | None = None
    ended_at: float | None = None
    ref: str | None = None  # what it registered
    error: str | None = None
    # The long part under way (a progress bar of the builder: labelling, fine-tune, distillation):
    phase: str | None = None
    phase_done: float | None = None
    phase_total: float | None = None
    eta_seconds: float | None = None  # the phase's seconds left at its rate so far, as of `updated_at`
    updated_at: float | None = None

    def seconds_left(self, now: float) -> float | None:
        """The phase's ETA as of `now`.

        >>> StepStatus(task="t", role="student", eta_seconds=90.0, updated_at=100.0).seconds_left(130.0)
        60.0
        >>> StepStatus(task="t", role="student").seconds_left(130.0) is None
        True
        """
        if self.eta_seconds is None or self.updated_at is None:
            return None
        return max(0.0, self.eta_seconds - (now - self.updated_at))


class BuildStatus(BaseModel):
    steps: list[StepStatus] = []
    started_at: float | None = None
    ended_at: float | None = None  # None while the build runs

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.ended_at is None

    def building(self, task: str) -> bool:
        """Whether a model of `task` is still to come from this build."""
        pending = {StepState.PENDING, StepState.BUILDING}
        return self.running and any(s.task == task and s.state in pending for s in self.steps)


def status_path(state_dir: Path) -> Path:
    return state_dir / "build" / "status.json"


def read_status(state_dir: Path) -> BuildStatus:
    """The last build's status (an empty one when no build ever ran, or the file is unreadable)."""
    path = status_path(state_dir)
    try:
        return BuildStatus.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return BuildStatus()


PROGRESS_WRITE_SECONDS = 2.0  # a status write fsyncs: progress reaches the file at most this often


def phase_recorder(entry: StepStatus, save: Callable[[], None]) -> Callable[[Progress], None]:
    """A progress listener that records the step's current phase in `entry`, saving it when the phase
    changes and otherwise at most every PROGRESS_WRITE_SECONDS."""

    def record(progress: Progress) -> None:
        now = time.time()
        new_phase = progress.desc != entry.phase
        entry.phase, entry.phase_done, entry.phase_total = progress.desc, progress.done, progress.total
        entry.eta_seconds = progress.eta_seconds
        if new_phase or entry.updated_at is None or now - entry.updated_at >= PROGRESS_WRITE_SECONDS:
            entry.updated_at = now
            save()

    return record
