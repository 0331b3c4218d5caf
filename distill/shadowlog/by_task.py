"""Routing records to one shadow log per task: a gateway serves any number of tasks of a kind."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from distill.shadowlog.writer import ShadowLogWriter


class ShadowLogWriters:
    """One writer per task, opened on the task's first record (`open_writer(task)`, started): a gateway
    serves any number of tasks of a kind, each with its own log. Routes each record by its `task`.

    Example::

        logs = ShadowLogWriters(lambda task: ShadowLogWriter(root, task).start())
        logs.append({"task": "topics", ...})  # -> <root>/topics/
        logs.close()
    """

    def __init__(self, open_writer: Callable[[str], ShadowLogWriter]) -> None:
        self._open_writer = open_writer
        self._writers: dict[str, ShadowLogWriter] = {}
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> None:
        task = str(record["task"])
        with self._lock:
            writer = self._writers.get(task)
            if writer is None:
                writer = self._writers[task] = self._open_writer(task)
        writer.append(record)

    def close(self) -> None:
        with self._lock:
            writers = list(self._writers.values())
        failed: Exception | None = None
        for writer in writers:
            try:
                writer.close()
            except Exception as exc:
                failed = exc
        if failed is not None:
            raise failed
