"""The PostgreSQL store's schema, as numbered steps applied in order at start.

`kdgate_schema` records each applied version. `migrate` runs in one transaction under an advisory lock,
so replicas starting together apply each step once (the others wait, then find nothing to do), and a
failing step leaves the database as it was. A database migrated by a newer kdgate is refused: this code
would not know what its tables mean.

Add a step by appending `(next version, sql)`; never edit a released one.
"""

from __future__ import annotations

import psycopg

MIGRATION_LOCK = 0x6B64_6701  # pg_advisory_xact_lock key: "kdg" + 1; the leases take the next keys

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE kdgate_documents (
            name text PRIMARY KEY,
            body jsonb NOT NULL,
            version bigint NOT NULL DEFAULT 0,  -- +1 per update: a reader never goes back to an older body
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE kdgate_rollouts (
            task text PRIMARY KEY,
            state jsonb NOT NULL,
            config jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE kdgate_audit (
            id bigserial PRIMARY KEY,
            task text NOT NULL,
            body jsonb NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX kdgate_audit_task ON kdgate_audit (task, id);
        CREATE TABLE kdgate_lease (
            name text PRIMARY KEY,
            identity text NOT NULL,
            pid integer NOT NULL,
            host text NOT NULL,
            since double precision NOT NULL,
            backend_pid integer NOT NULL  -- the holder's session: its lock in pg_locks proves it holds
        );
        """,
    ),
]


class SchemaTooNew(RuntimeError):
    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"schema version {found} is newer than this kdgate knows ({known}): "
            "a newer kdgate migrated this database; upgrade kdgate"
        )
        self.found, self.known = found, known


def migrate(conn: psycopg.Connection, migrations: list[tuple[int, str]] = MIGRATIONS) -> int:
    """Brings the database to the last of `migrations`; returns the version it had before."""
    known = max((version for version, _ in migrations), default=0)
    with conn.transaction():
        conn.execute("SET LOCAL statement_timeout = '10min'")  # waiting for another replica's migration
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kdgate_schema "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM kdgate_schema").fetchone()
        found: int = row[0] if row else 0
        if found > known:
            raise SchemaTooNew(found, known)
        for version, sql in sorted(migrations):
            if version > found:
                conn.execute(sql.encode())  # no parameters: sent as one simple query, several statements
                conn.execute("INSERT INTO kdgate_schema (version) VALUES (%s)", (version,))
    return found
