"""The continual loop across processes that share a state store (replicas, workers, a standalone watch):
one lease elects the one loop that checks, apart from the controller's, and what the loop remembers is
in the store, so the process that takes the lease over resumes a stopped run's window. On both stores:
local files (two store objects on one state dir, as two processes hold) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.continual.check import CheckConfig, ContinualCheck
from gateway.continual.store import LoopStore, loop_document
from statestore import StateStore, open_store


def eventually(condition: Callable[[], object], timeout: float = 10.0) -> Any:
    """`condition()` once truthy (a change crossing store objects); the deadline bounds a failure only."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return found


@pytest.fixture(params=["local", "postgresql"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StateStore, StateStore]]:
    """Two store objects on one store, as two processes open it."""
    url = None if request.param == "local" else request.getfixturevalue("postgres_db_url")
    here, there = open_store(url, tmp_path), open_store(url, tmp_path)
    yield here, there
    here.close()
    there.close()


class UntouchedHost:
    """A check that does not lead must not look at the gateway at all."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a check without the lease called host.{name}")


def test_one_process_holds_the_loops_lease_apart_from_the_controllers(
    two_stores: tuple[StateStore, StateStore],
) -> None:
    here, there = two_stores
    mine, theirs = here.lease("loop here", "continual"), there.lease("loop there", "continual")
    assert mine.acquire()
    assert not theirs.acquire()
    assert (theirs.holder() or {})["identity"] == "loop here"
    # The controller is elected on its own: the process that lost the loop's lease may still drive.
    assert there.lease("controller there").acquire()
    mine.release()
    assert eventually(theirs.acquire)


def test_a_run_stopped_in_one_process_is_resumed_by_the_next_holder_with_its_window(
    two_stores: tuple[StateStore, StateStore],
) -> None:
    here, there = two_stores
    stopped = LoopStore(here.document(loop_document("topics")))
    with stopped.run(100.0, "topics-student@1"):
        pass
    with pytest.raises(KeyboardInterrupt), stopped.run(200.0, "topics-student@1"):
        raise KeyboardInterrupt  # the process stops (kill, restart) while its child trains

    successor = LoopStore(there.document(loop_document("topics")))
    assert eventually(lambda: successor.interrupted("topics-student@1")) == 200.0
    assert successor.last_until() == 100.0
    assert LoopStore(there.document(loop_document("classify"))).running() is None  # per task


def test_a_check_without_the_lease_does_nothing_and_says_who_holds_it(
    two_stores: tuple[StateStore, StateStore], tmp_path: Path
) -> None:
    here, there = two_stores
    assert here.lease("continual loop on host-a (pid 1)", "continual").acquire()
    check = ContinualCheck(
        tmp_path,
        UntouchedHost(),
        CheckConfig(task="classify"),
        LoopStore(there.document(loop_document("classify"))),
        lease=there.lease("continual loop on host-b (pid 2)", "continual"),
    )
    said = asyncio.run(check.run_once())
    assert said == "no check here: continual loop on host-a (pid 1) holds the loop's lease"
    assert not check.leading
