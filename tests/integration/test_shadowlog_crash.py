"""A real writer process: SIGKILL keeps flushed segments whole; SIGTERM with close() loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from distill.shadowlog.reader import read_shadow
from distill.shadowlog.segments import TMP_PREFIX
from distill.shadowlog.writer import ShadowLogWriter

FLUSH_ROWS = 50

# Appends records r0, r1, ... as fast as it can (with a short pause so the test is not drowned in segments)
# and prints the number of records flushed after every flush. With "term" its SIGTERM handler closes the
# writer (graceful shutdown) and it prints how many records append() had accepted.
CHILD = r"""
import json, signal, sys, time
from distill.shadowlog.writer import ShadowLogWriter

root, mode = sys.argv[1], sys.argv[2]
w = ShadowLogWriter(root, "classify", flush_rows=int(sys.argv[3]), flush_seconds=3600)
if mode == "term":
    def on_term(signum, frame):
        w.close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
appended = reported = 0
try:
    while True:
        w.append({"request_id": f"r{appended}", "served_model": "student@1", "teacher_model": "teacher@1",
                  "input_text": "some input " * 20, "served_label": "pos", "served_probs": [0.1, 0.2, 0.7],
                  "teacher_logits": [-1.0, 0.5, 2.0], "agree": True, "kl": 0.01, "latency_ms": 2.0})
        appended += 1
        if w.counters.rows_written != reported:
            reported = w.counters.rows_written
            print(reported, flush=True)
        time.sleep(0.0002)
finally:
    if mode == "term":
        print(json.dumps({"appended": appended, "written": w.counters.rows_written}), flush=True)
"""


def start_child(root: Path, mode: str) -> subprocess.Popen[str]:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), mode, str(FLUSH_ROWS)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=repo,
    )


def wait_for_flushed(proc: subprocess.Popen[str], at_least: int) -> int:
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks on the child; pytest's own timeout is the backstop
        if int(line) >= at_least:
            return int(line)
    raise AssertionError(f"child exited early with {proc.wait()}")


def ids_on_disk(root: Path) -> list[int]:
    ids = read_shadow(str(root), "classify", columns=["request_id"])["request_id"].to_pylist()
    return sorted(int(i[1:]) for i in ids)


def test_sigkill_keeps_every_flushed_segment_whole(tmp_path: Path) -> None:
    proc = start_child(tmp_path, "kill")
    try:
        last_reported = wait_for_flushed(proc, at_least=8 * FLUSH_ROWS)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    directory = tmp_path / "classify"
    for f in directory.iterdir():
        if not f.name.startswith(TMP_PREFIX):
            assert pq.read_table(f).num_rows == FLUSH_ROWS  # every segment whole, none torn
    ids = ids_on_disk(tmp_path)
    # Exactly the flushed records: a prefix r0..r(k-1) made of whole segments, at least what was reported
    # (a flush may complete between the last report and the kill).
    assert len(ids) >= last_reported and len(ids) % FLUSH_ROWS == 0
    assert ids == list(range(len(ids)))
    # A writer restarting on the directory removes what the killed one left half-written.
    ShadowLogWriter(str(tmp_path), "classify").close()
    assert not [f for f in directory.iterdir() if f.name.startswith(TMP_PREFIX)]
    assert ids_on_disk(tmp_path) == ids


def test_sigterm_with_close_in_the_handler_loses_nothing(tmp_path: Path) -> None:
    proc = start_child(tmp_path, "term")
    try:
        last_reported = wait_for_flushed(proc, at_least=3 * FLUSH_ROWS)
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    final = json.loads(out.strip().splitlines()[-1])
    ids = ids_on_disk(tmp_path)
    # Every record whose append() returned is on disk; the signal may also land inside an append whose
    # record was already buffered — then it is written too, once.
    assert final["written"] in (final["appended"], final["appended"] + 1)
    assert ids == list(range(final["written"]))
    assert len(ids) >= last_reported
    assert not [f for f in (tmp_path / "classify").iterdir() if f.name.startswith(TMP_PREFIX)]
