"""Shadow log retention: delete the oldest segments while the log is over its size or age limits.

It runs after every flush, in the serving process, so it must not list the directory each time
(listing 16,000 segments costs ~0.6 s of GIL-held CPU). It keeps an index of the directory instead,
oldest first with a running total of bytes: listed once, kept up to date by the writer's own writes and
its deletes, and re-listed now and then (names only) for segments that other writers on shared storage
added (each replica writes into a folder of its own, `segments.replica_dir`; the limits are those of the
whole log, so the index covers every replica's folder). Segments that may hold records at or after
``protect_after`` — the window an unfinished re-distillation still reads — are never deleted.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections.abc import Callable

import fsspec

from distill.shadowlog.segments import Segment, age_order, list_segments, segment_paths, segment_time

RELIST_SECONDS = 300.0  # the index is re-read this often (segments of other writers)...
RELIST_MAX_SHARE = 0.001  # ...or less often, so that re-reading takes at most this share of the time


class SegmentIndex:
    """A segment directory, oldest first, with its total size kept as it changes (so a flush's
    retention check costs no pass over tens of thousands of segments).

    >>> index = SegmentIndex([Segment("b", 2.0, 10), Segment("a", 1.0, 5)])
    >>> [s.path for s in index.segments], index.total_bytes
    (['a', 'b'], 15)
    >>> index.drop_oldest(1); index.total_bytes
    10
    """

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = sorted(segments, key=age_order)
        self.total_bytes = sum(s.size for s in self.segments)

    def add(self, seg: Segment) -> None:
        bisect.insort(self.segments, seg, key=age_order)  # a new segment: at the end, barring clock steps
        self.total_bytes += seg.size

    def drop_oldest(self, n: int) -> None:
        self.total_bytes -= sum(s.size for s in self.segments[:n])
        del self.segments[:n]


class Retention:
    """The retention of one segment directory. Not thread-safe: the writer calls it under its I/O lock."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        directory: str,
        *,
        max_bytes: int | None,
        max_age_seconds: float | None,
        protect_after: float | Callable[[], float | None] | None,
        clock: Callable[[], float],
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.protect_after = protect_after
        self.clock = clock
        self.relist_seconds: float | None = None  # None: RELIST_SECONDS, stretched by RELIST_MAX_SHARE
        self._index: SegmentIndex | None = None
        self._listed_at = -math.inf
        self._listing_seconds = 0.0  # what the last listing took

    @property
    def enabled(self) -> bool:
        return self.max_bytes is not None or self.max_age_seconds is not None

    def enforce(self, now: float | None = None) -> int:
        """Delete oldest segments while over ``max_bytes`` or older than ``max_age_seconds``; the count."""
        if not self.enabled:
            return 0
        now = self.clock() if now is None else now
        protect = self.protect_after() if callable(self.protect_after) else self.protect_after
        index = self.index()
        total, deleted = index.total_bytes, 0
        for seg in index.segments:  # oldest first, so the first one kept ends the scan
            if protect is not None and seg.time >= protect:
                break
            too_old = self.max_age_seconds is not None and now - seg.time > self.max_age_seconds
            too_big = self.max_bytes is not None and total > self.max_bytes
            if not (too_old or too_big):
                break
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(seg.path)
            total -= seg.size
            deleted += 1
        index.drop_oldest(deleted)  # the oldest, in order: what was deleted
        return deleted

    def written(self, path: str, size: int | None = None) -> None:
        """The writer published a segment (of `size` bytes, None: asked of the store): the index learns
        it without a listing."""
        when = segment_time(path)
        if self._index is None or when is None:
            return
        try:
            self._index.add(Segment(path, when, int(self.fs.size(path)) if size is None else size))
        except Exception:  # the segment is safe; retention lists the directory again instead
            self._index = None

    def index(self) -> SegmentIndex:
        """The index of the directory, listed on first use and re-listed when due."""
        started = time.monotonic()
        if self._index is None:
            self._index = SegmentIndex(list_segments(self.fs, self.directory))
        elif started - self._listed_at >= self._relist_interval():
            self._index = SegmentIndex(self._relisted(self._index.segments))
        else:
            return self._index
        self._listed_at = time.monotonic()
        self._listing_seconds = self._listed_at - started
        return self._index

    def _relist_interval(self) -> float:
        if self.relist_seconds is not None:
            return self.relist_seconds
        return max(RELIST_SECONDS, self._listing_seconds / RELIST_MAX_SHARE)

    def _relisted(self, known: list[Segment]) -> list[Segment]:
        """The index's segments brought up to date by a listing of names only: what vanished is dropped,
        and only new names are looked up for their size (a names-only listing of 50,000 segments
        costs ~0.24 s, one with sizes ~0.81 s)."""
        names = set(segment_paths(self.fs, self.directory, detail=False))
        kept = [s for s in known if s.path in names]
        for name in names.difference(s.path for s in kept):
            when = segment_time(name)
            if when is None:
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile by another writer
                info = self.fs.info(name)
                if info.get("type", "file") == "file":
                    kept.append(Segment(name, when, int(info["size"])))
        return kept
