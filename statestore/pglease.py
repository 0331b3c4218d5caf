"""A lease in PostgreSQL (the controller's, the continual loop's): a session-level advisory lock on a
connection of its own, one lock key per lease.

PostgreSQL drops the lock when the session ends, however its process ended (kill -9 too: the kernel
closes the socket), so a survivor's next `acquire()` takes over without a timeout to wait out. A session
that vanished without closing (a partition) is dropped by the server's keepalives within ~11 s
(`SESSION_OPTIONS`). The holder's identity is written with the lock in `kdgate_lease`, beside the
backend pid that holds it; `holder()` trusts the row only while that backend holds the lock (pg_locks),
so a dead holder's row is never reported.

Example::

    lease = store.lease(process_identity("gateway"))
    Controller(store.rollouts, store.audit, source, setter, lease=lease).tick()
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg

from statestore import LeaseName, StoreUnavailable
from statestore.migrations import MIGRATION_LOCK

if TYPE_CHECKING:
    from statestore.postgres import PostgresStore

log = logging.getLogger("kdgate.store")

# pg_try_advisory_lock keys, per database; the row of `kdgate_lease` is the name
LEASE_LOCKS: dict[LeaseName, int] = {"controller": MIGRATION_LOCK + 1, "continual": MIGRATION_LOCK + 2}


class PgLease:
    """The lease `name` as `pg_try_advisory_lock` on a session of its own, the holder in `kdgate_lease`
    beside the backend pid that holds the lock: `holder()` trusts the row only while that session holds
    it (pg_locks)."""

    def __init__(self, store: PostgresStore, identity: str, name: LeaseName = "controller") -> None:
        self._store = store
        self.identity = identity
        self.name = name
        self._key = LEASE_LOCKS[name]
        self._conn: psycopg.Connection | None = None
        self._held = False
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Takes the lease if free; while held, checks the session still holds it. A lost session
        answers False once (another may have acted since), and the next call tries to take it again."""
        with self._lock:
            if self._held and (self._conn is None or self._conn.closed):
                log.warning("lost the %s lease: its session to %s ended", self.name, self._store.where)
                self._drop()
                return False
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = self._store.connect()
                except StoreUnavailable:
                    return False
            try:
                if self._held:
                    return self._still_held(self._conn)
                self._held = self._take(self._conn)
                return self._held
            except psycopg.Error as exc:
                if self._held:
                    log.warning("lost the %s lease: %s", self.name, self._store.reason(exc))
                self._drop()
                return False

    def _take(self, conn: psycopg.Connection) -> bool:
        # The lock and the holder row in one statement: nobody sees the lock held under a stale row.
        row = conn.execute(
            "WITH taken AS (SELECT pg_try_advisory_lock(%s) AS ok) "
            "INSERT INTO kdgate_lease (name, identity, pid, host, since, backend_pid) "
            "SELECT %s, %s, %s, %s, %s, pg_backend_pid() FROM taken WHERE ok "
            "ON CONFLICT (name) DO UPDATE SET identity = EXCLUDED.identity, pid = EXCLUDED.pid, "
            "host = EXCLUDED.host, since = EXCLUDED.since, backend_pid = EXCLUDED.backend_pid RETURNING 1",
            (self._key, self.name, self.identity, os.getpid(), socket.gethostname(), time.time()),
        ).fetchone()
        return row is not None

    def _still_held(self, conn: psycopg.Connection) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (self._key >> 32, self._key & 0xFFFF_FFFF),
        ).fetchone()
        if row and row[0]:
            return True
        self._drop()
        return False

    def holder(self) -> dict[str, Any] | None:
        with self._store.transaction() as conn:
            row = conn.execute(
                "SELECT h.identity, h.pid, h.host, h.since FROM kdgate_lease h JOIN pg_locks l "
                "ON l.locktype = 'advisory' AND l.granted AND l.pid = h.backend_pid "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1 "
                "WHERE h.name = %s",
                (self._key >> 32, self._key & 0xFFFF_FFFF, self.name),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("identity", "pid", "host", "since"), row, strict=True))

    def release(self) -> None:
        with self._lock:
            if self._conn is not None and self._held:
                # Unlocked before the session closes: a successor's very next try finds it free.
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
            self._drop()

    def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
