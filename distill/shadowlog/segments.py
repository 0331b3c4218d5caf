"""Shadow log segments: their names, the directory of a task, and listing the finished ones.

A segment is ``seg-<utc ms>-<seq>-<writer id>.parquet``; a writer first writes ``.tmp-<uuid>.parquet`` and
renames it (see ``writer.py``), so a name a reader looks at always holds a whole segment.

>>> name = segment_name(1_700_000_000_123, 7, "abcd1234")
>>> name
'seg-20231114T221320123Z-000007-abcd1234.parquet'
>>> segment_time("/log/classify/" + name)
1700000000.123
>>> segment_time("/log/classify/.tmp-abc.parquet") is None
True
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec

_TASK_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SEG_RE = re.compile(r"^seg-(\d{8}T\d{9})Z-(\d+)-([0-9a-f]{8})\.parquet$")
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Segment:
    path: str
    time: float  # epoch seconds in the name; no record in the segment has a later ts
    size: int


def task_dir(
    root: str, task: str, fs: fsspec.AbstractFileSystem | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and directory holding the segments of ``task`` under ``root``: ``fs`` when
    given (one built with its own options), else the one fsspec resolves from ``root``'s protocol."""
    if not _TASK_RE.match(task):
        raise ValueError(f"task must match {_TASK_RE.pattern}, got {task!r}")
    resolved, path = fsspec.core.url_to_fs(root)
    return fs or resolved, f"{path.rstrip('/')}/{task}"


def list_segments(fs: fsspec.AbstractFileSystem, directory: str) -> list[Segment]:
    """Finished segments, oldest first. Temp files and anything else in the directory are ignored."""
    fs.invalidate_cache(directory)  # s3fs caches listings; retention and readers need the current one
    try:
        entries = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return []
    segs = []
    for e in entries:
        when = segment_time(e["name"])
        if when is not None and e.get("type", "file") == "file":
            segs.append(Segment(e["name"], when, int(e["size"])))
    return sorted(segs, key=age_order)


def segment_time(path: str) -> float | None:
    """The time in a segment's name (epoch seconds), None for anything that is not a segment.
    Parsed by hand: `strptime` costs ~20 µs a name, and a listing parses every name in the directory."""
    m = _SEG_RE.match(path.rsplit("/", 1)[-1])
    if m is None:
        return None
    s = m.group(1)  # YYYYmmddTHHMMSSmmm
    fields = (int(s[0:4]), int(s[4:6]), int(s[6:8]), int(s[9:11]), int(s[11:13]), int(s[13:15]))
    return calendar.timegm(fields) + int(s[15:]) / 1000


def age_order(seg: Segment) -> tuple[float, str]:
    return seg.time, seg.path


def segment_name(ms: int, seq: int, writer_id: str) -> str:
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y%m%dT%H%M%S")
    return f"seg-{stamp}{ms % 1000:03d}Z-{seq:06d}-{writer_id}.parquet"
