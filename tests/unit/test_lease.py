"""The controller lease: one holder at a time, taken over as soon as its holder's process dies (kill -9
too), and a controller that does not hold it does not act."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rollout.driver import Controller
from rollout.lease import FileLease
from rollout.model import Phase, RolloutConfig
from rollout.store import AuditLog, RolloutStore
from tests.support import ErroringSource, RecordedWeights


def test_one_holder_at_a_time_and_the_next_takes_over_on_release(tmp_path: Path) -> None:
    path = tmp_path / "rollout"
    first, second = FileLease(path, "first"), FileLease(path, "second")
    assert first.holder() is None
    assert first.acquire() and first.acquire()  # idempotent
    assert not second.acquire()
    assert (second.holder() or {})["identity"] == "first"
    first.release()
    assert second.holder() is None
    assert second.acquire()
    assert (first.holder() or {})["identity"] == "second"


def test_a_killed_holder_loses_the_lease_at_once(tmp_path: Path) -> None:
    path = tmp_path / "rollout"
    holder_code = (
        "import time; from pathlib import Path; from rollout.lease import FileLease; "
        f"assert FileLease(Path({str(path)!r}), 'doomed').acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    doomed = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "held"
        survivor = FileLease(path, "survivor")
        assert not survivor.acquire()
        assert (survivor.holder() or {})["pid"] == doomed.pid
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
        assert survivor.acquire()  # the kernel dropped the dead process's lock: no timeout to wait out
    finally:
        doomed.kill()


def test_only_the_holder_acts_and_a_successor_resyncs_before_it_ticks(tmp_path: Path) -> None:
    directory = tmp_path / "rollout"
    store, audit = RolloutStore(directory), AuditLog(directory)
    leader = FileLease(directory, "leader")
    assert leader.acquire()
    config = RolloutConfig(steps=(5, 100), min_dwell_s=0.0, min_requests=30, max_disagreement=0.5)
    Controller(store, audit, ErroringSource(), RecordedWeights()).start("classify", "s@1", "s@2", config)

    weights = RecordedWeights()
    follower = Controller(store, audit, ErroringSource(), weights, lease=FileLease(directory, "follower"))
    follower.tick()
    assert not follower.leading and weights.applied == []
    assert store.load("classify")[0].phase is Phase.PROGRESSING  # type: ignore[index]
    assert follower.candidates == {"classify": "s@2"}  # it follows what is under rollout

    leader.release()  # as if the leader's process ended
    follower.tick()
    assert follower.leading
    assert store.load("classify")[0].phase is Phase.ROLLED_BACK  # type: ignore[index]
    assert weights.applied == [{"s@1": 95, "s@2": 5}, {"s@1": 100, "s@2": 0}]  # the stored split first
