"""Where rollouts live between ticks and restarts: the controller's two store ports, and their local
files (the PostgreSQL ones are in statestore/postgres.py): one JSON file per task, and the audit log.

`<dir>/<task>.json` holds `{"state": ..., "config": ...}` and is replaced atomically (temp + fsync +
rename), so a crash leaves the previous or the next state, never half of one. `<dir>/events.jsonl`
is append-only, one transition per line, fsynced.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from durablefs import write_json
from rollout.machine import InvalidTransition
from rollout.model import Event, Phase, RolloutConfig, RolloutState

EVENTS_FILE = "events.jsonl"
SAVE_LOCK = ".save.lock"


class StaleRollout(InvalidTransition):
    """The stored rollout is no longer the one a change was computed from: another process (the leading
    controller's tick, an operator command through another replica) changed it meanwhile. Nothing was
    written; look again and retry (HTTP 409, as any transition that does not apply)."""


def check_current(stored: RolloutState | None, replaces: RolloutState) -> None:
    """Raises `StaleRollout` unless `stored` is `replaces` (nothing stored stands for an idle rollout).

    >>> from dataclasses import replace
    >>> idle = RolloutState.idle("classify")
    >>> check_current(None, idle)
    >>> check_current(idle, replace(idle, phase=Phase.PAUSED))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rollout.store.StaleRollout: the rollout of 'classify' changed meanwhile (now idle, step 0); ...
    """
    if stored == replaces or (stored is None and replaces.phase is Phase.IDLE):
        return
    now = "not stored" if stored is None else f"{stored.phase.value}, step {stored.step_index}"
    raise StaleRollout(
        f"the rollout of {replaces.task!r} changed meanwhile (now {now}); look again and retry"
    )


class RolloutStates(Protocol):
    """The rollout of each task: state and config, replaced whole on every save."""

    def tasks(self) -> list[str]: ...

    def load(self, task: str) -> tuple[RolloutState, RolloutConfig] | None: ...

    def save(self, state: RolloutState, config: RolloutConfig, replaces: RolloutState | None = None) -> None:
        """Stores `state`. With `replaces` (the state the change was computed from), only if that is
        still the stored one; else `StaleRollout`, and nothing is written."""
        ...


class EventLog(Protocol):
    """The rollout audit log: transitions appended, read back oldest first."""

    def append(self, event: Event) -> None: ...

    def read(self, task: str | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...


class RolloutStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, task: str) -> Path:
        return self.directory / f"{task}.json"

    def tasks(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def load(self, task: str) -> tuple[RolloutState, RolloutConfig] | None:
        path = self._path(task)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return RolloutState.from_dict(data["state"]), RolloutConfig.from_dict(data["config"])

    def save(self, state: RolloutState, config: RolloutConfig, replaces: RolloutState | None = None) -> None:
        payload = {"state": state.to_dict(), "config": config.to_dict()}
        with self._lock, self._exclusive():
            if replaces is not None:
                loaded = self.load(state.task)
                check_current(loaded[0] if loaded else None, replaces)
            write_json(self._path(state.task), payload)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Every process's saves, one at a time: an flock on a lock file of its own (the directory's
        flock is the controller lease, held for as long as a controller leads)."""
        with (self.directory / SAVE_LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


class AuditLog:
    """Rollout events appended to one JSON-lines file, each fsynced; a torn last line is skipped.

    Example::

        log.append(event)
        log.read(task="classify", limit=20)    # the task's last 20 events, oldest first
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / EVENTS_FILE
        self._lock = threading.Lock()

    def append(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), sort_keys=True)
        with self._lock, self.path.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, task: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        events = []
        for line in self.path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a torn last line after a crash: skip it
                continue
            if task is None or event.get("task") == task:
                events.append(event)
        return events[-limit:] if limit else events
