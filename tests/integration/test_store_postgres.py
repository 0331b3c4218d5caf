"""The PostgreSQL state store against a real server: what one replica writes another reads, nothing is
lost to concurrent writers, the schema migrates once and refuses a newer one, one controller holds the
lease and a killed one loses it, and a database that goes away and comes back is survived."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from deploy.local.postgres import PostgresServer
from deploy.local.processes import free_port
from rollout.driver import Controller
from rollout.model import Event, Phase, RolloutConfig, RolloutState
from rollout.store import AuditLog, StaleRollout
from statestore import StoreUnavailable
from statestore.migrations import MIGRATIONS, migrate
from statestore.postgres import PostgresStore, SchemaRefused
from tests.support import ErroringSource, RecordedWeights

CONFIG = RolloutConfig(steps=(5, 100), min_dwell_s=0.0, min_requests=30, max_disagreement=0.5)


def eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Waits for `condition` (a change crossing processes, a socket noticed closed): no timing asserted,
    the deadline only keeps a broken store from hanging the run."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def open_store(postgres_db_url: str) -> Iterator[Callable[..., PostgresStore]]:
    """`open_store(**options)`: a store on the test's database; every one is closed after the test."""
    opened: list[PostgresStore] = []

    def _open(url: str = postgres_db_url, **options: object) -> PostgresStore:
        store = PostgresStore(url, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


def test_a_change_through_one_store_is_read_through_another(open_store: Callable[..., PostgresStore]) -> None:
    # No polling to speak of: the change can only arrive by NOTIFY.
    here, there = open_store(poll_seconds=600), open_store(poll_seconds=600)
    assert here.document("traffic") is here.document("traffic")  # one object per name and store
    watched = there.document("traffic")
    split = {"classify-student@3": 5, "t@1": 95}
    assert here.document("traffic").update(lambda doc: doc | {"classify": split}) == {"classify": split}
    eventually(lambda: watched.read() == {"classify": split})
    # Both replicas hold the very same document, down to the order of its keys (jsonb's, not Python's).
    assert list(watched.read()["classify"]) == list(here.document("traffic").read()["classify"])
    assert there.document("shadow_rates").read() == {}


def test_a_change_without_notification_is_read_on_the_next_poll(
    open_store: Callable[..., PostgresStore], postgres_db_url: str
) -> None:
    watched = open_store(poll_seconds=0.1).document("traffic")
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:  # a write whose NOTIFY was missed
        conn.execute("INSERT INTO kdgate_documents (name, body, version) VALUES ('traffic', '{\"a\": 1}', 1)")
    eventually(lambda: watched.read() == {"a": 1})


def test_concurrent_writers_of_different_keys_all_keep_their_changes(
    open_store: Callable[..., PostgresStore],
) -> None:
    stores = [open_store(), open_store()]
    rounds = 40

    def count(store: PostgresStore, key: str) -> None:
        for _ in range(rounds):
            store.document("traffic").update(lambda doc: doc | {key: doc.get(key, 0) + 1})

    writers = [
        threading.Thread(target=count, args=(store, key)) for store, key in zip(stores, "ab", strict=True)
    ]
    writers += [threading.Thread(target=count, args=(stores[0], "c"))]  # two writers in one store too
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert open_store().document("traffic").read() == {"a": rounds, "b": rounds, "c": rounds}


def test_rollout_states_round_trip(open_store: Callable[..., PostgresStore]) -> None:
    rollouts = open_store().rollouts
    assert rollouts.tasks() == [] and rollouts.load("classify") is None
    state = RolloutState(
        Phase.PROGRESSING, "classify", "t@1", "s@2", 1, 25, 1000.5, failed=1, last_reason="ok"
    )
    rollouts.save(state, CONFIG)
    rollouts.save(RolloutState.idle("generate", 3.0), CONFIG)
    assert rollouts.load("classify") == (state, CONFIG)
    paused = RolloutState(Phase.PAUSED, "classify", "t@1", "s@2", 1, 25, 1001.0)
    rollouts.save(paused, CONFIG)  # replaced whole
    assert rollouts.load("classify") == (paused, CONFIG)
    assert open_store().rollouts.tasks() == ["classify", "generate"]


def test_a_save_computed_from_a_replaced_state_is_refused(open_store: Callable[..., PostgresStore]) -> None:
    here, there = open_store().rollouts, open_store().rollouts
    seen = RolloutState(Phase.PROGRESSING, "classify", "t@1", "s@2", 0, 5, 1000.0)
    here.save(seen, CONFIG, replaces=RolloutState.idle("classify"))  # nothing stored: an idle rollout
    paused = RolloutState(Phase.PAUSED, "classify", "t@1", "s@2", 0, 5, 1001.0)
    there.save(paused, CONFIG, replaces=seen)  # the other replica acted first
    aborted = RolloutState(Phase.ROLLED_BACK, "classify", "t@1", "s@2", 0, 0, 1002.0)
    with pytest.raises(StaleRollout, match="now paused"):
        here.save(aborted, CONFIG, replaces=seen)
    assert here.load("classify") == (paused, CONFIG)


def test_the_audit_log_reads_like_the_local_one(
    open_store: Callable[..., PostgresStore], tmp_path: Path
) -> None:
    local, audit = AuditLog(tmp_path), open_store().audit
    for i in range(7):
        task = "classify" if i % 3 else "generate"
        event = Event(task, float(i), "judge", Phase.PROGRESSING, Phase.PROGRESSING, i, {"s@1": 100}, f"e{i}")
        local.append(event)
        audit.append(event)
    for task in (None, "classify", "generate", "other"):
        for limit in (None, 0, 1, 3, 100):
            assert audit.read(task, limit) == local.read(task, limit), (task, limit)
    assert [e["reason"] for e in audit.read("classify", 2)] == ["e4", "e5"]  # the last two, oldest first


def test_a_fresh_database_is_migrated_once(
    open_store: Callable[..., PostgresStore], postgres_db_url: str
) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_store()
        except BaseException as exc:
            errors.append(exc)

    replicas = [threading.Thread(target=start) for _ in range(3)]  # replicas starting together
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join()
    assert errors == []
    open_store().document("traffic").update(lambda doc: {"kept": True})
    open_store()  # and once more: nothing to do, nothing lost
    with psycopg.connect(postgres_db_url) as conn:
        assert conn.execute("SELECT version FROM kdgate_schema").fetchall() == [(v,) for v, _ in MIGRATIONS]
    assert open_store().document("traffic").read() == {"kept": True}


def test_a_newer_kdgate_upgrades_an_older_database(postgres_db_url: str) -> None:
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        assert migrate(conn) == 0
        upgrade = [*MIGRATIONS, (len(MIGRATIONS) + 1, "ALTER TABLE kdgate_audit ADD COLUMN actor text")]
        assert migrate(conn, upgrade) == len(MIGRATIONS)
        assert migrate(conn, upgrade) == len(upgrade)
        conn.execute("SELECT actor FROM kdgate_audit")


def test_a_database_newer_than_the_code_is_refused(
    open_store: Callable[..., PostgresStore], postgres_db_url: str
) -> None:
    open_store()
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO kdgate_schema (version) VALUES (999)")
    with pytest.raises(SchemaRefused, match="schema version 999 is newer"):
        open_store()


def test_one_lease_holder_at_a_time_and_the_next_takes_over_on_release(
    open_store: Callable[..., PostgresStore],
) -> None:
    here, there = open_store(), open_store()
    first, second = here.lease("first"), there.lease("second")
    assert first.holder() is None
    assert first.acquire() and first.acquire()  # idempotent
    assert not second.acquire()
    assert (second.holder() or {})["identity"] == "first"
    first.release()
    assert second.holder() is None
    assert second.acquire()
    assert (first.holder() or {}) | {"since": 0} == {
        "identity": "second",
        "pid": os.getpid(),
        "host": (second.holder() or {})["host"],
        "since": 0,
    }


def test_a_killed_holder_loses_the_lease(
    open_store: Callable[..., PostgresStore], postgres_db_url: str
) -> None:
    holder_code = (
        "import time; from statestore.postgres import PostgresStore; "
        f"assert PostgresStore({postgres_db_url!r}).lease('doomed').acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    with subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True) as doomed:
        try:
            assert doomed.stdout is not None and doomed.stdout.readline().strip() == "held"
            survivor = open_store().lease("survivor")
            assert not survivor.acquire()
            assert (survivor.holder() or {})["pid"] == doomed.pid
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait(timeout=30)
            # The kernel closed the dead process's socket; its session ends, and the lock with it.
            eventually(survivor.acquire)
            assert (survivor.holder() or {})["identity"] == "survivor"
        finally:
            doomed.kill()


def test_only_the_lease_holder_acts(open_store: Callable[..., PostgresStore]) -> None:
    leading, following = open_store(), open_store()
    leader = leading.lease("leader")
    assert leader.acquire()
    Controller(leading.rollouts, leading.audit, ErroringSource(), RecordedWeights()).start(
        "classify", "s@1", "s@2", CONFIG
    )
    weights = RecordedWeights()
    follower = Controller(
        following.rollouts,
        following.audit,
        ErroringSource(),
        weights,
        lease=following.lease("follower"),
    )
    follower.tick()
    assert not follower.leading and weights.applied == []
    assert following.rollouts.load("classify")[0].phase is Phase.PROGRESSING  # type: ignore[index]

    leader.release()  # as if the leader's process ended
    follower.tick()
    assert follower.leading
    assert following.rollouts.load("classify")[0].phase is Phase.ROLLED_BACK  # type: ignore[index]
    assert weights.applied == [{"s@1": 95, "s@2": 5}, {"s@1": 100, "s@2": 0}]  # the stored split first
    assert [e["to_phase"] for e in leading.audit.read("classify")] == ["progressing", "rolled_back"]


def test_an_unreachable_database_is_reported_at_once_without_the_password() -> None:
    port = free_port()  # nobody listens there
    with pytest.raises(StoreUnavailable) as raised:
        PostgresStore(f"postgresql://kdgate:hunter2-secret@127.0.0.1:{port}/kdgate")
    message = str(raised.value)
    assert f"127.0.0.1:{port}/kdgate" in message and "refused" in message
    assert "hunter2" not in message


@pytest.fixture
def private_server() -> Iterator[PostgresServer]:
    """A server of the test's own, to stop and start under a store."""
    with PostgresServer.start() as server:
        yield server


def test_a_store_survives_its_database_going_away_and_coming_back(
    private_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_server.create_database("kdgate").replace("postgres@", "postgres:hunter2-secret@")
    store = PostgresStore(url, retry=(0.05, 0.2))
    try:
        traffic = store.document("traffic")
        traffic.update(lambda doc: {"classify": {"s@1": 100}})
        lease = store.lease("me")
        assert store.up() and lease.acquire()
        with caplog.at_level(logging.DEBUG, logger="kdgate.store"):
            private_server.stop("fast")
            eventually(lambda: not store.up())
            assert traffic.read() == {"classify": {"s@1": 100}}  # still served
            with pytest.raises(StoreUnavailable):
                traffic.update(lambda doc: {})
            with pytest.raises(StoreUnavailable):
                store.rollouts.save(RolloutState.idle("classify"), CONFIG)
            with pytest.raises(StoreUnavailable):
                store.audit.append(Event("classify", 0.0, "operator", Phase.IDLE, Phase.IDLE, 0, {}, "x"))
            assert not lease.acquire()  # its session is gone, and the lock with it

            def retried() -> bool:  # several attempts failed: the loss is logged once all the same
                return sum("reconnecting to" in r.getMessage() for r in caplog.records) >= 3

            eventually(retried)
            private_server.restart()
            eventually(store.up)
        assert traffic.update(lambda doc: doc | {"generate": {"g@1": 100}}) == {
            "classify": {"s@1": 100},
            "generate": {"g@1": 100},
        }
        eventually(lease.acquire)  # taken again once its session is back
        messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "kdgate.store"]
        assert [level for level, text in messages if "state store" in text] == ["WARNING", "INFO"]
        assert "hunter2" not in caplog.text
    finally:
        store.close()


def test_documents_are_re_read_when_the_connection_comes_back(
    open_store: Callable[..., PostgresStore], postgres_db_url: str
) -> None:
    """A change made while a replica was cut off (its NOTIFY went nowhere) is read on reconnection."""
    role = f"replica_{os.getpid()}_{free_port()}"
    with psycopg.connect(postgres_db_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        cut_off = open_store(
            postgres_db_url.replace("postgres@", f"{role}@"), poll_seconds=600, retry=(0.05, 0.2)
        )
        traffic = cut_off.document("traffic")
        open_store().document("traffic").update(lambda doc: {"v": 1})
        eventually(lambda: traffic.read() == {"v": 1})
        admin.execute(f"ALTER ROLE {role} NOLOGIN")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        eventually(lambda: not cut_off.up())
        open_store().document("traffic").update(lambda doc: {"v": 2})
        assert traffic.read() == {"v": 1}
        admin.execute(f"ALTER ROLE {role} LOGIN")
        eventually(cut_off.up)
        eventually(lambda: traffic.read() == {"v": 2})
