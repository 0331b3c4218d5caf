"""What the continual loop remembers between runs and restarts, per task: a document of the state store,
so a loop that moves to another gateway (its lease taken over, on another machine) goes on from it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from statestore import Document


def loop_document(task: str) -> str:
    """The store document of `task`'s loop. On local files, `<state_dir>/distill/loop.json` (classify
    keeps its original name) and `loop-<task>.json`, where earlier versions kept them."""
    return "distill/loop" if task == "classify" else f"distill/loop-{task}"


class LoopStore:
    """The end of the last window trained on (the next run starts there), and the run under way, if
    any. A run that was stopped (restart, kill) is started again with the same parent and window, so
    `kdgate distill` finds its checkpoint and resumes instead of starting over.
    """

    def __init__(self, document: Document) -> None:
        self.document = document

    def _read(self) -> dict[str, Any]:
        return self.document.read()

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
        self.document.update(lambda doc: doc | {"running": {"until": until, "parent": parent}})
        try:
            yield
        except Exception:
            self.document.update(lambda doc: {k: v for k, v in doc.items() if k != "running"})
            raise
        self.document.update(lambda doc: {"last_until": until})
