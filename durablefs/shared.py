"""A JSON document in one file that several processes on one machine read and change: gateways sharing
a state dir (replicas behind one balancer), a gateway and its standalone rollout driver.

A read is served from memory and looks at the file again at most every `poll_seconds`: a stat, and a
re-read only when the file was replaced (each write renames a new file in, so its inode changes). A
change re-reads the file under an exclusive `flock` on the file's directory, applies itself and writes
atomically, so two processes that change different keys at once both keep their change.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> here, there = SharedDocument(folder / "traffic.json"), SharedDocument(folder / "traffic.json")
>>> here.update(lambda doc: doc | {"classify": {"s@1": 100}})
{'classify': {'s@1': 100}}
>>> there.update(lambda doc: doc | {"generate": {"g@1": 100}})["classify"]  # kept here's change
{'s@1': 100}
>>> sorted(SharedDocument(folder / "traffic.json", poll_seconds=0).read())
['classify', 'generate']
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from durablefs import write_json

Document = dict[str, Any]


class SharedDocument:
    def __init__(self, path: Path, poll_seconds: float = 0.25) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()  # this process's writers
        self._seen: tuple[int, int] | None = None  # (inode, mtime_ns) of the file last read
        self._checked = 0.0
        self._doc: Document = {}
        self._reload()

    def read(self) -> Document:
        """The document as last seen, refreshed when the file changed and `poll_seconds` have passed.
        Callers must not change it: a change swaps the whole dict."""
        now = time.monotonic()
        if now - self._checked >= self.poll_seconds:
            self._checked = now
            if self._identity() != self._seen:
                self._reload()
        return self._doc

    def update(self, change: Callable[[Document], Document]) -> Document:
        """Applies `change` to the file's current document and writes the result; returns it."""
        with self._lock, self._exclusive():
            self._reload()
            new = change(dict(self._doc))
            write_json(self.path, new)
            self._seen, self._doc = self._identity(), new
            return new

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _reload(self) -> None:
        seen = self._identity()
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            doc = {}
        self._seen, self._doc = seen, doc

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Every process's writers, one at a time: an flock on the directory (a directory cannot be
        hard-linked into a copy of the state, so copies never share the lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
