"""Shadow log segments: their names, the directory of a task, and listing the finished ones.

A segment is ``seg-<utc ms>-<seq>-<writer id>.parquet``; a writer on a filesystem first writes
``.tmp-<pid>-<uuid>.parquet`` and renames it (see ``writer.py``), so a name a reader looks at always holds
a whole segment.

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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec

from distill.objectstore import filesystem

_TASK_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SEG_RE = re.compile(r"^seg-(\d{8}T\d{9})Z-(\d+)-([0-9a-f]{8})\.parquet$")
TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"^\.tmp-(\d+)-[0-9a-f]+\.parquet$")


@dataclass(frozen=True)
class Segment:
    path: str
    time: float  # epoch seconds in the name; no record in the segment has a later ts
    size: int


def task_dir(
    root: str, task: str, fs: fsspec.AbstractFileSystem | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and directory holding the segments of ``task`` under ``root``: ``fs`` when
    given (one built with its own options), else the one ``root``'s URL resolves to (objectstore.py)."""
    if not _TASK_RE.match(task):
        raise ValueError(f"task must match {_TASK_RE.pattern}, got {task!r}")
    resolved, path = filesystem(root)
    return fs or resolved, f"{path.rstrip('/')}/{task}"


def temp_name(pid: int, token: str) -> str:
    """The name a segment is written under before its rename: it carries the writing process's id, so
    a writer starting on a directory shared with live ones (gateways on one state dir) removes only
    what a dead process left behind."""
    return f"{TMP_PREFIX}{pid}-{token}.parquet"


def other_process_alive(pid: int) -> bool:
    """Whether another process with this id runs on this machine. Our own id counts as gone: a writer
    starting here has nothing in flight, and in a container the gateway restarts under the same pid."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def orphaned_temp(path: str, alive: Callable[[int], bool] = other_process_alive) -> bool:
    """Whether ``path`` is a temp file no live process is writing: one whose writer's pid is not
    ``alive``, or one named without a pid. Segments and other files are never orphans.

    >>> orphaned_temp("/log/classify/" + temp_name(41, "ab12"), alive=lambda pid: pid == 41)
    False
    >>> orphaned_temp("/log/classify/" + temp_name(41, "ab12"), alive=lambda pid: False)
    True
    >>> orphaned_temp("/log/classify/.tmp-ab12.parquet", alive=lambda pid: True)
    True
    >>> orphaned_temp("/log/classify/seg-20231114T221320123Z-000007-abcd1234.parquet", lambda pid: False)
    False
    """
    name = path.rsplit("/", 1)[-1]
    if not name.startswith(TMP_PREFIX):
        return False
    match = _TMP_RE.match(name)
    return match is None or not alive(int(match.group(1)))


def replica_dir(directory: str, replica: str | None) -> str:
    """Where one replica writes the segments of a task directory: its own folder, so that writers on
    shared storage never share one (a writer's start removes the temp files in its folder).

    >>> replica_dir("bucket/shadow/classify", "gw-7f9c"), replica_dir("/log/classify", None)
    ('bucket/shadow/classify/gw-7f9c', '/log/classify')
    """
    if replica is None:
        return directory
    if not _TASK_RE.match(replica):
        raise ValueError(f"replica id must match {_TASK_RE.pattern}, got {replica!r}")
    return f"{directory}/{replica}"


def segment_paths(fs: fsspec.AbstractFileSystem, directory: str, detail: bool) -> dict[str, dict[str, Any]]:
    """What is in ``directory`` and its replicas' folders, by path (with size and type when ``detail``):
    one flat listing, which on S3 is one request per 1,000 objects whatever the number of replicas."""
    fs.invalidate_cache(directory)  # s3fs caches listings; retention and readers need the current one
    try:
        found = fs.find(directory, detail=True) if detail else {path: {} for path in fs.find(directory)}
    except FileNotFoundError:
        return {}
    prefix = directory.rstrip("/") + "/"
    return {p: e for p, e in found.items() if p.startswith(prefix) and p[len(prefix) :].count("/") <= 1}


def list_segments(fs: fsspec.AbstractFileSystem, directory: str) -> list[Segment]:
    """Finished segments of every writer, oldest first. Temp files and anything else are ignored."""
    segs = []
    for path, e in segment_paths(fs, directory, detail=True).items():
        when = segment_time(path)
        if when is not None and e.get("type", "file") == "file":
            segs.append(Segment(path, when, int(e["size"])))
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
