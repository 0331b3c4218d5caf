"""The gateway as a real process: kill -9 leaves only whole, readable segments; SIGTERM loses nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from distill.shadowlog.reader import read_shadow
from tests.support import child_pids, is_alive, start_gateway

STUDENT = "classify-student@1"
# These tests are about what reaches the disk, not about scheduling: in SCHED_IDLE (the default) the
# shadow teacher gets no CPU while anything else keeps both cores busy, and nothing would be scored.
BUSY_MACHINE_SAFE = {"shadow_idle_class": "false"}


def send(url: str, state_dir: Path, n: int) -> list[str]:
    token = (state_dir / "admin.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    httpx.put(
        f"{url}/admin/traffic/classify", json={"weights": {STUDENT: 100}}, headers=headers
    ).raise_for_status()
    ids = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            r = client.post("/classify", json={"text": f"crash test {i}"})
            r.raise_for_status()
            ids.append(r.headers["x-request-id"])
    return ids


def test_kill_9_leaves_only_whole_readable_segments(state_dir: Path) -> None:
    proc, url = start_gateway(state_dir, shadow_flush_rows=16, shadow_flush_seconds=0.2, **BUSY_MACHINE_SAFE)
    sent = send(url, state_dir, 120)
    time.sleep(1.0)  # let some segments flush; the rest is in the buffer when the process dies
    children = child_pids(proc.pid)  # the shadow teacher's process among them
    assert children, "the shadow teacher runs in a process of its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(is_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(is_alive(pid) for pid in children), "a child of the killed gateway lives on"

    segments = sorted((state_dir / "shadow" / "classify").glob("seg-*.parquet"))
    assert segments, "nothing was flushed before the kill"
    total = 0
    for path in segments:  # every segment on disk reads in full
        table = pq.read_table(path)
        total += table.num_rows
        assert table.column("teacher_logits").null_count == 0
    log = read_shadow(str(state_dir / "shadow"), "classify")
    ids = log.column("request_id").to_pylist()
    assert len(ids) == total == len(set(ids))  # no duplicates, no temp files read
    assert set(ids) <= set(sent)
    # Flushed segments hold a prefix of the traffic (in order of arrival), with no holes in it.
    assert sorted(ids, key=sent.index) == sent[: len(ids)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_loses_nothing(state_dir: Path, signum: int) -> None:
    proc, url = start_gateway(
        state_dir, shadow_flush_rows=10_000, shadow_flush_seconds=3600, **BUSY_MACHINE_SAFE
    )
    sent = send(url, state_dir, 60)
    proc.send_signal(signum)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -signum is a clean exit here.
    assert proc.wait(timeout=60) in (0, -signum)
    log = read_shadow(str(state_dir / "shadow"), "classify")
    assert sorted(log.column("request_id").to_pylist()) == sorted(sent)
