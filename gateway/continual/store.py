"""What the continual loop remembers between runs and restarts, per task."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from durablefs import write_json


def loop_store_path(state_dir: Path, task: str) -> Path:
    """Where the loop remembers the end of its last window (classify keeps its original file name)."""
    return state_dir / "distill" / ("loop.json" if task == "classify" else f"loop-{task}.json")


class LoopStore:
    """`<state_dir>/distill/loop.json`: the end of the last window trained on (the next run starts there),
    and the run under way, if any. A run the gateway stopped (restart, kill) is started again with the
    same parent and window, so `kdgate distill` finds its checkpoint and resumes instead of starting over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        loaded = json.loads(self.path.read_text()) if self.path.exists() else {}
        return loaded if isinstance(loaded, dict) else {}

    def last_until(self) -> float | None:
        last = self._read().get("last_until")
        return float(last) if last is not None else None

    def running(self) -> dict[str, Any] | None:
        """The run under way (`until`, `parent`), or None."""
        running = self._read().get("running")
        return running if isinstance(running, dict) else None

    def interrupted(self, parent: str) -> float | None:
        """The window end of `parent`'s run that never finished; None if there is none (or it was for
        another parent: the serving student changed, so that run is moot)."""
        running = self.running()
        if not running or running.get("parent") != parent:
            return None
        return float(running["until"])

    @contextlib.contextmanager
    def run(self, until: float, parent: str) -> Iterator[None]:
        """Around one run: recorded as under way while it trains; on success the next window starts at
        `until`; on a failure (an Exception) the record is dropped, so a failing window is not retried
        forever. A stop (cancellation, Ctrl-C, kill) leaves it under way: the next start resumes it."""
        self._write({**self._read(), "running": {"until": until, "parent": parent}})
        try:
            yield
        except Exception:
            self._write({k: v for k, v in self._read().items() if k != "running"})
            raise
        self._write({"last_until": until})

    def _write(self, payload: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, payload)
