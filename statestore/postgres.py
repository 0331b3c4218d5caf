"""The state store in PostgreSQL: gateway replicas on many machines share one database.

Documents are rows (`kdgate_documents`), each served from memory: an update is a read-modify-write
under `SELECT … FOR UPDATE` that sends `NOTIFY kdgate_documents, '<name>'` as it commits, and one
listener thread per store (its own connection) re-reads a document when told, so another replica's
change shows within a second; it also re-reads them all every `poll_seconds`, in case a notification
was lost. Rollout states and the audit log are plain tables; the controller lease is a session-level
advisory lock, which PostgreSQL drops when its holder's session ends (kill -9 included).

When the database goes away, `read()` goes on serving the last documents seen, writes raise
`StoreUnavailable` (an operator's change is refused, the controller decides nothing), and the listener
reconnects with exponential backoff, re-reading every document when it is back. Both the loss and the
recovery are logged once.

Example::

    store = PostgresStore("postgresql://kdgate:secret@db:5432/kdgate")   # migrates at start
    traffic = store.document("traffic")
    traffic.update(lambda doc: doc | {"classify": {"classify-student@3": 100}})
    traffic.read()                                     # memory, never a query
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from rollout.model import Event, RolloutConfig, RolloutState
from rollout.store import check_current
from statestore import Doc, LeaseName, StoreUnavailable
from statestore.migrations import SchemaTooNew, migrate
from statestore.pglease import PgLease

log = logging.getLogger("kdgate.store")

CHANNEL = "kdgate_documents"
# Every session: a statement never hangs a caller for long, and the server drops a vanished client's
# session (and so its lease) within ~11 s instead of the kernel's two hours; no idle timeout, since
# the lease's session idles between controller ticks.
SESSION_OPTIONS = (
    "-c statement_timeout=10s -c idle_session_timeout=0 "
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
)


class SchemaRefused(StoreUnavailable):
    """The database was migrated by a newer kdgate."""


class PostgresStore:
    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 3.0,  # seconds; libpq counts whole seconds, at least 2
        poll_seconds: float = 2.0,  # full re-read of the documents, should a notification be missed
        retry: tuple[float, float] = (0.5, 10.0),  # reconnection backoff: first and longest wait
    ) -> None:
        self._url = url
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"invalid PostgreSQL URL: {_scrub(str(exc), url)}") from None
        self._password = str(params.get("password") or "")
        host, port = params.get("host") or "localhost", params.get("port") or "5432"
        self.where = f"PostgreSQL at {host}:{port}/{params.get('dbname') or params.get('user') or ''}"
        self.connect_timeout = connect_timeout
        self.poll_seconds = poll_seconds
        self.retry = retry
        self._lock = threading.Lock()  # the connection below, one transaction at a time
        self._conn = self.connect()
        self._up = True
        self._up_lock = threading.Lock()  # the loss and the recovery are logged once each
        self._closing = threading.Event()
        self._wake = f"kdgate_wake_{uuid.uuid4().hex}"  # close() notifies it to end the listener's wait
        self._documents: dict[str, PgDocument] = {}
        self._documents_lock = threading.Lock()
        self._leases: list[PgLease] = []
        try:
            migrate(self._conn)
            self._listener: psycopg.Connection | None = self._listen()
        except SchemaTooNew as exc:
            self._conn.close()
            raise SchemaRefused(f"{self.where}: {exc}") from None
        except psycopg.Error as exc:
            self._conn.close()
            raise StoreUnavailable(f"{self.where}: cannot migrate: {self.reason(exc)}") from None
        except BaseException:
            self._conn.close()
            raise
        self.rollouts = PgRollouts(self)
        self.audit = PgAuditLog(self)
        self._thread = threading.Thread(target=self._watch, name="kdgate-store-listener", daemon=True)
        self._thread.start()

    def document(self, name: str) -> PgDocument:
        with self._documents_lock:
            if name in self._documents:
                return self._documents[name]
            doc = self._documents[name] = PgDocument(self, name)
        # Registered before the first read: a change notified meanwhile is not lost (versions order them).
        with contextlib.suppress(StoreUnavailable):  # served empty until the listener reconnects
            self._refresh([name])
        return doc

    def lease(self, identity: str, name: LeaseName = "controller") -> PgLease:
        lease = PgLease(self, identity, name)
        self._leases.append(lease)
        return lease

    def up(self) -> bool:
        """Whether the store answered last time it was used or watched: a flag, never a query. A closed
        connection shows at once; a silent network loss within the keepalive time (~11 s)."""
        return self._up and not self._closing.is_set()

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        for lease in self._leases:
            lease.release()
        with self._lock, contextlib.suppress(psycopg.Error):
            self._conn.execute("SELECT pg_notify(%s, '')", (self._wake,))
        self._thread.join(timeout=self.connect_timeout + 1)  # a daemon: left to end on its own
        with self._lock:
            self._conn.close()

    def connect(self) -> psycopg.Connection:
        """A new autocommit session, or `StoreUnavailable` within `connect_timeout` (the reason, never
        the password)."""
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(2, math.ceil(self.connect_timeout)),
                application_name="kdgate",
                options=SESSION_OPTIONS,
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                tcp_user_timeout=10_000,  # ms: a write to a vanished server fails instead of hanging
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot reach {self.where}: {self.reason(exc)}") from None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """The store's connection inside one transaction; `StoreUnavailable` while the database is away
        or when the connection breaks in the middle (which marks the store down)."""
        with self._lock:
            if not self.up() or self._conn.closed:
                raise StoreUnavailable(f"{self.where} is unreachable; reconnecting")
            try:
                with self._conn.transaction():
                    yield self._conn
            except psycopg.OperationalError as exc:
                if self._conn.broken or self._conn.closed:
                    self._lost(exc)
                raise StoreUnavailable(f"{self.where}: {self.reason(exc)}") from None

    def reason(self, exc: BaseException) -> str:
        return _scrub(" ".join(str(exc).split()), self._password)  # libpq's are multi-line

    def _lost(self, exc: BaseException) -> None:
        with self._up_lock:
            if not self._up or self._closing.is_set():
                return
            self._up = False
            log.warning(
                "state store %s lost (%s): serving the last known documents, refusing changes, reconnecting",
                self.where,
                self.reason(exc),
            )

    def _listen(self) -> psycopg.Connection:
        conn = self.connect()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._wake)))
        except psycopg.Error:
            conn.close()
            raise
        return conn

    def _watch(self) -> None:
        """The listener thread: refreshes documents on notification and on every `poll_seconds`, and
        reconnects (with backoff) whenever its own or the writers' connection is lost."""
        delay = self.retry[0]
        while not self._closing.is_set():
            try:
                if self._listener is None or not self._up:
                    self._reconnect()
                    delay = self.retry[0]
                listener = self._listener
                assert listener is not None
                changed = {
                    note.payload
                    for note in listener.notifies(timeout=self.poll_seconds, stop_after=1)
                    if note.channel == CHANNEL
                }
                if not self._closing.is_set():
                    self._refresh(changed or None, listener)
            except (psycopg.Error, StoreUnavailable) as exc:
                if self._closing.is_set():
                    break
                self._lost(exc)
                self._drop_listener()
                log.debug("reconnecting to %s in %.1f s", self.where, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, self.retry[1])
        self._drop_listener()

    def _reconnect(self) -> None:
        self._drop_listener()
        listener = self._listen()  # listening before the re-read below: no change falls in between
        try:
            fresh = self.connect()
        except BaseException:
            listener.close()
            raise
        with self._lock:
            stale, self._conn = self._conn, fresh
        stale.close()
        try:
            self._refresh(None, listener)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        with self._up_lock:
            if not self._up:
                self._up = True
                log.info("state store %s is back: documents re-read, changes accepted again", self.where)

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _refresh(
        self, names: set[str] | list[str] | None, listener: psycopg.Connection | None = None
    ) -> None:
        """Re-reads the cached documents named (all when None): on the listener's connection from its
        thread, else through `transaction()`."""
        with self._documents_lock:
            docs = dict(self._documents)
        wanted = [name for name in (docs if names is None else names) if name in docs]
        if not wanted:
            return
        query = "SELECT name, body, version FROM kdgate_documents WHERE name = ANY(%s)"
        if listener is not None:
            rows = listener.execute(query, (wanted,)).fetchall()
        else:
            with self.transaction() as conn:
                rows = conn.execute(query, (wanted,)).fetchall()
        for name, body, version in rows:
            docs[name].offer(body, version)


class PgDocument:
    """One row of `kdgate_documents`, served from memory (see the module docstring)."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        self._store = store
        self.name = name
        self._doc: Doc = {}
        self._version = 0  # of `_doc`; a stored row's is at least 1
        self._lock = threading.Lock()

    def read(self) -> Doc:
        return self._doc

    def update(self, change: Callable[[Doc], Doc]) -> Doc:
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO kdgate_documents (name, body) VALUES (%s, '{}') ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )
            row = conn.execute(
                "SELECT body, version FROM kdgate_documents WHERE name = %s FOR UPDATE", (self.name,)
            ).fetchone()
            assert row is not None  # inserted above, and documents are never deleted
            body, version = row
            new = change(dict(body))
            # The body as stored (jsonb orders keys its own way): this replica caches what the others read.
            stored = conn.execute(
                "UPDATE kdgate_documents SET body = %s, version = %s, updated_at = now() WHERE name = %s "
                "RETURNING body",
                (Jsonb(new), version + 1, self.name),
            ).fetchone()
            assert stored is not None
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.name))  # delivered at commit
        self.offer(stored[0], version + 1)
        return stored[0]

    def offer(self, body: Doc, version: int) -> None:
        """Takes `body` if it is newer than the copy held: reads racing a write never go back."""
        with self._lock:
            if version > self._version:
                self._doc, self._version = body, version


class PgRollouts:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def tasks(self) -> list[str]:
        with self._store.transaction() as conn:
            return [task for (task,) in conn.execute("SELECT task FROM kdgate_rollouts ORDER BY task")]

    def load(self, task: str) -> tuple[RolloutState, RolloutConfig] | None:
        with self._store.transaction() as conn:
            row = conn.execute(
                "SELECT state, config FROM kdgate_rollouts WHERE task = %s", (task,)
            ).fetchone()
        if row is None:
            return None
        return RolloutState.from_dict(row[0]), RolloutConfig.from_dict(row[1])

    def save(self, state: RolloutState, config: RolloutConfig, replaces: RolloutState | None = None) -> None:
        with self._store.transaction() as conn:
            # Saves of one task one at a time, across replicas (a row lock cannot hold a missing row).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('kdgate_rollouts:' || %s))", (state.task,))
            if replaces is not None:
                row = conn.execute(
                    "SELECT state FROM kdgate_rollouts WHERE task = %s", (state.task,)
                ).fetchone()
                check_current(None if row is None else RolloutState.from_dict(row[0]), replaces)
            conn.execute(
                "INSERT INTO kdgate_rollouts (task, state, config) VALUES (%s, %s, %s) "
                "ON CONFLICT (task) DO UPDATE SET state = EXCLUDED.state, config = EXCLUDED.config, "
                "updated_at = now()",
                (state.task, Jsonb(state.to_dict()), Jsonb(config.to_dict())),
            )


class PgAuditLog:
    """Rollout events in `kdgate_audit`, in the order they were appended (by id)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def append(self, event: Event) -> None:
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO kdgate_audit (task, body) VALUES (%s, %s)", (event.task, Jsonb(event.to_dict()))
            )

    def read(self, task: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The events of `task` (all tasks when None), the last `limit` of them (all when 0 or None),
        oldest first."""
        with self._store.transaction() as conn:
            rows = conn.execute(
                "SELECT body FROM (SELECT id, body FROM kdgate_audit "
                "WHERE %(task)s::text IS NULL OR task = %(task)s ORDER BY id DESC LIMIT %(limit)s) AS last "
                "ORDER BY id",
                {"task": task, "limit": limit or None},  # LIMIT NULL: no limit
            ).fetchall()
        return [body for (body,) in rows]


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
