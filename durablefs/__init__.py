"""Durable file writes: a reader sees the old content or the new, never half, and the new survives a
power cut once the call returns.

One atomic write for the whole product (rollout state, traffic weights, shadow rates, the loop's run
state, the registry's manifests, the admin token): write a temp file beside the target, fsync it,
rename it over the target, fsync the directory (the rename itself is only durable once the directory
entry is on disk). Logs that grow a record at a time (a sweep's points) use `append_line`: fsynced per
record, a torn tail healed before the next append. It is its own package because `gateway`, `rollout`
and `distill` all write state and `rollout` and `distill` import neither each other nor `gateway`.

>>> import shutil, tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_json(folder / "weights.json", {"classify-student@1": 5})
>>> (folder / "weights.json").read_text()
'{\\n  "classify-student@1": 5\\n}\\n'
>>> sorted(p.name for p in folder.iterdir())  # no temp file left behind
['weights.json']
>>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_json(path: Path, payload: Any, *, mode: int = 0o644) -> None:
    """Replaces `path` with `payload` as indented, key-sorted JSON and a final newline."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", mode=mode)


def write_text(path: Path, text: str, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Replaces `path` with `text`; `mode` applies from the first byte (a secret is never world-readable).
    `exclusive`: see `write_with`."""
    write_with(path, lambda handle: handle.write(text.encode()), mode=mode, exclusive=exclusive)


def write_with(
    path: Path, fill: Callable[[IO[bytes]], object], *, mode: int = 0o644, exclusive: bool = False
) -> None:
    """Replaces `path` with what `fill` writes into an open binary file (for writers such as
    `torch.save` or `numpy.savez` that take a file object).

    `exclusive`: create `path` only if it does not exist, else FileExistsError and `path` untouched.
    Of processes racing to create it, exactly one wins and the others read the winner's whole file
    (a hard link publishes the complete temp file at once, as the rename does). On a filesystem
    without hard links (vfat, some FUSE and SMB mounts) it is the plain replace, last writer wins."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: concurrent writers never share
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            _publish_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _publish_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        os.replace(tmp, path)
        return
    with contextlib.suppress(OSError):  # published already: a temp file left over is only litter
        tmp.unlink()


_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def append_line(path: Path, line: str) -> None:
    """Appends `line` and a newline to a JSON-lines file and fsyncs it before returning: the record
    survives a kill or power cut once the call returns. A torn last line (a crash mid-append) is cut off
    first, so it never glues onto the new one and hides it from readers."""
    path = Path(path)
    created = not path.exists()
    with path.open("a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                handle.truncate(handle.read().rfind(b"\n") + 1)
        handle.write(line.encode() + b"\n")  # "a" mode: at the end, wherever the reads left the position
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    """Flushes a file written by someone else (e.g. a library's `save`) to disk."""
    with Path(path).open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Makes the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
