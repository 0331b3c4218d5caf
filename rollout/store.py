"""Where rollouts live between ticks and restarts: the controller's two store ports, and their local
files (the PostgreSQL ones are in statestore/postgres.py): one JSON file per task, and the audit log.

`<dir>/<task>.json` holds `{"state": ..., "config": ...}` and is replaced atomically (temp + fsync +
rename), so a crash leaves the previous or the next state, never half of one. `<dir>/events.jsonl`
is append-only, one transition per line, fsynced.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from durablefs import write_json
from rollout.model import Event, RolloutConfig, RolloutState

EVENTS_FILE = "events.jsonl"


class RolloutStates(Protocol):
    """The rollout of each task: state and config, replaced whole on every save."""

    def tasks(self) -> list[str]: ...

    def load(self, task: str) -> tuple[RolloutState, RolloutConfig] | None: ...

    def save(self, state: RolloutState, config: RolloutConfig) -> None: ...


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

    def save(self, state: RolloutState, config: RolloutConfig) -> None:
        payload = {"state": state.to_dict(), "config": config.to_dict()}
        path = self._path(state.task)
        with self._lock:
            write_json(path, payload)


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
