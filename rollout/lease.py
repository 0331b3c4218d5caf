"""Who drives rollouts: the holder of the controller lease.

Every process may host a rollout controller (each gateway, a standalone `kdgate rollout run`); only the
lease holder ticks, so two controllers over one store never both act. The others try again on each of
their ticks, and the first to find the lease free takes over: it re-asserts the stored weights and goes
on from the stored state, as a restarted controller does (`Controller.tick`).

The local lease is an `flock` on the rollout store's directory (a directory, unlike a file, cannot be
hard-linked into a copy of the state and so shared by accident), its holder written beside it in
`controller.lease`. The kernel drops the lock when its holder's process ends, however it ends (kill -9
too), so a takeover waits one tick of a survivor, not a timeout.

Example::

    lease = FileLease(state_dir / "rollout", identity=process_identity("gateway"))
    Controller(store, audit, source, setter, lease=lease).tick()  # acts only while it holds the lease
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from durablefs import write_json

HOLDER_FILE = "controller.lease"  # JSON, but not *.json: the rollout store takes those for tasks


class Lease(Protocol):
    def acquire(self) -> bool:
        """Takes the lease if it is free (never waits); whether this process holds it now."""
        ...

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease (`identity`, `pid`, `host`, `since`), or None when nobody does."""
        ...

    def release(self) -> None: ...


def process_identity(role: str) -> str:
    """`role` and where it runs: `gateway :8000 on host (pid 4242)`."""
    return f"{role} on {socket.gethostname()} (pid {os.getpid()})"


class FileLease:
    """The lease as an exclusive `flock` on `directory`, its holder in `directory/<holder_file>`."""

    def __init__(self, directory: Path, identity: str, holder_file: str = HOLDER_FILE) -> None:
        self.directory = directory
        self.identity = identity
        self.holder_file = holder_file  # another lease (the shadow's) names its holder's file its way
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        holder = {"identity": self.identity, "pid": os.getpid(), "host": socket.gethostname()}
        write_json(self.directory / self.holder_file, holder | {"since": time.time()})
        self._fd = fd
        return True

    def holder(self) -> dict[str, Any] | None:
        if self._fd is None and self._free():
            return None
        try:
            found: dict[str, Any] = json.loads((self.directory / self.holder_file).read_text())
        except (OSError, ValueError):  # taken this instant, its holder not written yet
            return None
        return found

    def _free(self) -> bool:
        """Whether nobody holds the lease: a probe that takes it and lets go at once (a contender that
        tries in that instant fails, and tries again on its next tick)."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops the probe's lock
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
