from __future__ import annotations

import math
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from distill.shadowlog.reader import read_shadow, shadow_stats
from distill.shadowlog.schema import SCHEMA_VERSION, SHADOW_SCHEMA
from distill.shadowlog.segments import TMP_PREFIX, list_segments, task_dir, temp_name
from distill.shadowlog.writer import ShadowLogClosed, ShadowLogWriter
from tests.support import shadow_record

T0 = 1_750_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mem_root() -> Iterator[str]:
    root = f"memory://kdgate-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def segments(root: str, task: str = "classify") -> list[Any]:
    return list_segments(*task_dir(root, task))


def test_round_trip(mem_root: str) -> None:
    clock = FakeClock()
    topk_ids = [[5, 9], [1, 2], [7, 3]]  # (T=3, k=2)
    with ShadowLogWriter(mem_root, "classify", clock=clock) as w:
        w.append(shadow_record(0, ts=T0 - 5))
        w.append(shadow_record(1, teacher_served=True))
        w.append(
            shadow_record(
                2, teacher_topk_ids=topk_ids, teacher_topk_logprobs=np.log([[0.5, 0.25]] * 3),
                teacher_tail_mass=[0.25, 0.25, 0.25], token_agree=[True, False, True],
            )
        )  # fmt: skip
    t = read_shadow(mem_root, "classify")
    assert t.schema.equals(SHADOW_SCHEMA, check_metadata=False)
    rows = t.to_pylist()
    assert [r["request_id"] for r in rows] == ["r0", "r1", "r2"]
    r0, r1, r2 = rows
    assert r0["schema_version"] == SCHEMA_VERSION and r0["task"] == "classify"
    assert r0["ts"] == datetime.fromtimestamp(T0 - 5, UTC)
    assert r1["ts"] == datetime.fromtimestamp(T0, UTC)  # missing ts: the writer's clock
    assert r0["input_text"] == "input number 0" and len(r0["input_sha256"]) == 64
    assert r0["teacher_logits"] == [-1.0, 0.5, 2.0]  # exact in float16
    assert np.allclose(r0["served_probs"], [0.1, 0.2, 0.7])
    assert r0["agree"] is False and r0["kl"] == 0.0 and r0["latency_ms"] == 3.5
    assert r1["teacher_logits"] is None and r1["agree"] is None and r1["kl"] is None
    assert r0["teacher_topk_ids"] is None
    assert r2["teacher_topk_ids"] == topk_ids
    assert np.allclose(r2["teacher_topk_logprobs"], np.log([[0.5, 0.25]] * 3), atol=1e-3)
    assert r2["token_agree"] == [True, False, True]


def test_bad_records_are_refused_at_append(mem_root: str) -> None:
    w = ShadowLogWriter(mem_root, "classify")
    with pytest.raises(ValueError, match="missing"):
        w.append({k: v for k, v in shadow_record(0).items() if k != "served_label"})
    with pytest.raises(ValueError, match="unknown"):
        w.append(shadow_record(0, colour="red"))
    with pytest.raises(ValueError, match="task"):
        w.append(shadow_record(0, task="generate"))
    with pytest.raises(ValueError, match="dimension"):
        w.append(shadow_record(0, teacher_logits=[[1.0, 2.0]]))
    with pytest.raises(ValueError, match="input_sha256"):
        w.append(shadow_record(0, input_text=None))
    w.append(shadow_record(1, input_text=None, input_sha256="ab" * 32))  # already hashed upstream: accepted
    w.close()
    assert read_shadow(mem_root, "classify")["request_id"].to_pylist() == ["r1"]
    with pytest.raises(ShadowLogClosed):
        w.append(shadow_record(2))


def test_flush_by_rows(mem_root: str) -> None:
    w = ShadowLogWriter(mem_root, "classify", flush_rows=10, clock=FakeClock())
    for i in range(25):
        w.append(shadow_record(i))
    assert len(segments(mem_root)) == 2
    assert read_shadow(mem_root, "classify").num_rows == 20
    w.close()
    assert [s.size > 0 for s in segments(mem_root)] == [True] * 3
    assert read_shadow(mem_root, "classify")["request_id"].to_pylist() == [f"r{i}" for i in range(25)]


def test_flush_by_seconds(mem_root: str) -> None:
    clock = FakeClock()
    w = ShadowLogWriter(mem_root, "classify", flush_rows=1000, flush_seconds=2.0, clock=clock)
    w.append(shadow_record(0))
    clock.now += 1.0
    w.append(shadow_record(1))
    assert w.maybe_flush() == 0
    clock.now += 1.0  # 2 s after the OLDEST buffered row
    assert w.maybe_flush() == 2
    assert w.maybe_flush() == 0
    w.append(shadow_record(2))
    clock.now += 5.0
    w.append(shadow_record(3))  # append itself flushes once the time is due
    assert w.counters.rows_written == 4 and len(segments(mem_root)) == 2


def test_background_flusher(mem_root: str) -> None:
    w = ShadowLogWriter(mem_root, "classify", flush_seconds=0.05).start()
    w.append(shadow_record(0))
    deadline = time.monotonic() + 5
    while not segments(mem_root) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_shadow(mem_root, "classify").num_rows == 1
    w.close()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_redaction_leaves_no_input_in_any_byte(tmp_path: Path, compression: str) -> None:
    secret = "SECRET-needle"
    recs = [shadow_record(i, input_text=f"{secret} {i} " + "x" * 40) for i in range(50)]
    for redact in (False, True):
        root = str(tmp_path / f"redact-{redact}")
        w = ShadowLogWriter(root, "classify", flush_rows=20, redact_inputs=redact, compression=compression)
        for r in recs:
            w.append(r)
        w.close()
        files = list((tmp_path / f"redact-{redact}" / "classify").iterdir())
        found = any(secret.encode() in f.read_bytes() for f in files)
        if not redact and compression == "none":
            assert found  # the check can see plain text, so its silence below means something
        if redact:
            assert not found
            t = read_shadow(root, "classify")
            assert t["input_text"].null_count == 50
            assert len(set(t["input_sha256"].to_pylist())) == 50
        for f in files:  # statistics would carry min/max input values even where pages are compressed
            md = pq.ParquetFile(f).metadata
            for c in range(md.num_columns):
                col = md.row_group(0).column(c)
                if col.path_in_schema == "input_text":
                    assert col.statistics is None


def test_retention_by_bytes(mem_root: str) -> None:
    clock = FakeClock()
    w = ShadowLogWriter(mem_root, "classify", flush_rows=10, flush_seconds=1e9, clock=clock)
    for i in range(30):
        clock.now += 1
        w.append(shadow_record(i))
    sizes = [s.size for s in segments(mem_root)]
    assert len(sizes) == 3
    w.retention.max_bytes = sizes[-1] + sizes[-2]  # room for the two newest
    assert w.enforce_retention() == 1
    assert read_shadow(mem_root, "classify")["request_id"].to_pylist() == [f"r{i}" for i in range(10, 30)]
    for i in range(30, 40):  # retention also runs after every flush
        clock.now += 1
        w.append(shadow_record(i))
    assert read_shadow(mem_root, "classify")["request_id"].to_pylist()[0] == "r20"


def test_retention_by_age_keeps_the_protected_window(mem_root: str) -> None:
    clock = FakeClock()
    protect: list[float | None] = [None]
    w = ShadowLogWriter(
        mem_root, "classify", flush_rows=5, flush_seconds=1e9, protect_after=lambda: protect[0], clock=clock
    )
    for i in range(20):  # 4 segments, flushed at T0+50, +100, +150, +200
        clock.now += 10
        w.append(shadow_record(i))
    assert len(segments(mem_root)) == 4
    w.retention.max_age_seconds = 100
    clock.now = T0 + 225  # the first two are older than 100 s, but training still reads from T0+90 on
    protect[0] = T0 + 90
    assert w.enforce_retention() == 1  # the T0+50 segment only
    assert [s.time for s in segments(mem_root)] == [T0 + 100, T0 + 150, T0 + 200]
    protect[0] = None  # the training finished
    assert w.enforce_retention() == 1
    assert read_shadow(mem_root, "classify").num_rows == 10


def test_temp_files_are_ignored_and_a_dead_writers_are_cleaned_at_start(mem_root: str) -> None:
    with ShadowLogWriter(mem_root, "classify") as w:
        w.append(shadow_record(0))
    fs, directory = task_dir(mem_root, "classify")
    seg = segments(mem_root)[0].path
    gone = subprocess.Popen(["true"])
    gone.wait()  # a writer that has exited: nothing runs under its pid
    fs.copy(seg, f"{directory}/{temp_name(gone.pid, 'c0ffee')}")  # a whole one: must still be ignored
    fs.pipe(f"{directory}/{TMP_PREFIX}torn.parquet", b"PAR1 half")  # named before temps carried a pid
    # Another gateway on the same directory, writing right now: its temp file is not ours to remove.
    in_flight = temp_name(os.getppid(), "beef")
    fs.pipe(f"{directory}/{in_flight}", b"PAR1 still being written")
    assert read_shadow(mem_root, "classify").num_rows == 1
    ShadowLogWriter(mem_root, "classify").close()
    left = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(directory, detail=False))
    assert left == sorted([seg.rsplit("/", 1)[-1], in_flight])


def test_unreadable_segment_is_skipped_and_reported(mem_root: str) -> None:
    with ShadowLogWriter(mem_root, "classify", flush_rows=2) as w:
        for i in range(4):
            w.append(shadow_record(i))
    fs, directory = task_dir(mem_root, "classify")
    bad = f"{directory}/seg-20250101T000000000Z-000001-deadbeef.parquet"
    fs.pipe(bad, b"not parquet at all")
    skipped: list[str] = []
    t = read_shadow(mem_root, "classify", on_skip=lambda path, err: skipped.append(path))
    assert t.num_rows == 4 and skipped == [bad]
    assert shadow_stats(mem_root, "classify", on_skip=lambda path, err: None)[0]["records"] == 4


def test_filter_by_model_time_and_columns(mem_root: str) -> None:
    clock = FakeClock()
    with ShadowLogWriter(mem_root, "classify", flush_rows=7, clock=clock) as w:
        for i in range(40):
            clock.now = T0 + i
            w.append(shadow_record(i, model="student-a@1" if i % 2 else "student-b@1"))
    t = read_shadow(mem_root, "classify", since=T0 + 10, until=T0 + 20, models=["student-a@1"])
    assert t["request_id"].to_pylist() == [f"r{i}" for i in range(11, 20, 2)]
    t = read_shadow(
        mem_root, "classify", since=datetime.fromtimestamp(T0 + 30, UTC), columns=["request_id", "kl"]
    )
    assert t.column_names == ["request_id", "kl"] and t.num_rows == 10
    assert read_shadow(mem_root, "classify", models=["nobody"]).num_rows == 0
    empty = read_shadow(mem_root, "other", columns=["ts"])
    assert empty.num_rows == 0 and empty.column_names == ["ts"]
    with pytest.raises(ValueError, match="unknown"):
        read_shadow(mem_root, "classify", columns=["nope"])


def test_shadow_stats_per_model(mem_root: str) -> None:
    with ShadowLogWriter(mem_root, "classify", flush_rows=16) as w:
        for i in range(40):
            w.append(shadow_record(i, teacher_served=i % 4 == 3))
    stats = {s["served_model"]: s for s in shadow_stats(mem_root, "classify")}
    student, teacher = stats["student@1"], stats["teacher@1"]
    ids = [i for i in range(40) if i % 4 != 3]
    assert student["records"] == 30 and teacher["records"] == 10
    assert student["agreement"] == pytest.approx(sum(i % 4 != 0 for i in ids) / 30)
    assert student["mean_kl"] == pytest.approx(sum(0.01 * (i % 5) for i in ids) / 30, rel=1e-5)
    assert teacher["agreement"] is None and teacher["mean_kl"] is None  # no data, not "perfect"
    assert abs(student["bytes"] + teacher["bytes"] - sum(s.size for s in segments(mem_root))) <= 1
    assert student["first_ts"] <= student["last_ts"]


def test_concurrent_appends_lose_nothing(mem_root: str) -> None:
    w = ShadowLogWriter(mem_root, "classify", flush_rows=97)

    def worker(k: int) -> None:
        for i in range(1000):
            w.append(shadow_record(k * 1000 + i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    ids = read_shadow(mem_root, "classify", columns=["request_id"])["request_id"].to_pylist()
    assert len(ids) == 4000 and set(ids) == {f"r{i}" for i in range(4000)}


class FailingRenames(MemoryFileSystem):
    """The in-memory store (the same files as ``memory://``) whose next ``failures`` publications fail
    (a rename, or an object store's one PUT of a segment), as an unreachable object store's do."""

    cachable = False  # fsspec would hand every test the first instance, with its count spent

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def mv(self, path1: str, path2: str, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("storage unavailable")
        super().mv(path1, path2, *args, **kwargs)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("storage unavailable")
        super().pipe_file(path, value, *args, **kwargs)


def test_failed_write_is_retried_without_loss_or_duplicates(mem_root: str) -> None:
    w = ShadowLogWriter(mem_root, "classify", flush_rows=5, fs=FailingRenames(failures=1))
    for i in range(7):
        w.append(shadow_record(i))  # the 5th append's flush fails: logged and counted, not raised
    assert w.counters.flush_errors == 1 and segments(mem_root) == []
    w.close()
    ids = read_shadow(mem_root, "classify")["request_id"].to_pylist()
    assert ids == [f"r{i}" for i in range(7)]
    fs, directory = task_dir(mem_root, "classify")
    assert not [p for p in fs.ls(directory, detail=False) if TMP_PREFIX in p]


def test_close_called_inside_an_append_is_deferred_not_lost(mem_root: str) -> None:
    # A SIGTERM handler runs between two bytecodes of whatever the main thread was doing, possibly in
    # the middle of append(); a clock that calls close() reproduces that without signals.
    w: ShadowLogWriter | None = None
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        # Fire once, inside the writer's own critical section (after a few flushes happened).
        if w is not None and calls[0] >= 40 and not w.closed and getattr(w._local, "depth", 0) > 0:
            w.close()
            assert not w.closed  # deferred to the end of the interrupted call
        return T0

    w = ShadowLogWriter(mem_root, "classify", flush_rows=3, clock=clock)
    appended = 0
    with pytest.raises(ShadowLogClosed):
        for i in range(100):
            w.append(shadow_record(i))
            appended += 1
    assert w.closed
    ids = read_shadow(mem_root, "classify")["request_id"].to_pylist()
    assert ids == [f"r{i}" for i in range(appended)]


def test_segment_time_reads_the_time_in_a_name() -> None:
    from distill.shadowlog.segments import segment_name, segment_time

    ms = 1_764_601_234_567
    assert segment_time(f"/log/classify/{segment_name(ms, 3, 'abcd1234')}") == ms / 1000
    assert segment_time("/log/classify/.tmp-abc.parquet") is None


def test_retention_keeps_its_index_by_its_own_writes_and_deletes(mem_root: str) -> None:
    """Listed once, never again: the index alone must track what this writer wrote and deleted."""
    clock = FakeClock()
    w = ShadowLogWriter(mem_root, "classify", flush_rows=5, flush_seconds=1e9, clock=clock)
    w.retention.relist_seconds = math.inf
    for i in range(10):
        clock.now += 1
        w.append(shadow_record(i))
    sizes = [s.size for s in segments(mem_root)]
    w.retention.max_bytes = sum(sizes)  # room for two segments of this size
    assert w.enforce_retention() == 0  # the one listing
    for i in range(10, 40):  # six more segments; each flush's retention deletes the oldest
        clock.now += 1
        w.append(shadow_record(i))
    on_disk = segments(mem_root)
    assert sum(s.size for s in on_disk) <= w.retention.max_bytes and len(on_disk) >= 1
    assert read_shadow(mem_root, "classify")["request_id"].to_pylist()[-1] == "r39"
    assert w.enforce_retention() == 0  # the index agrees with the disk: nothing left to delete


def test_retention_relisting_adds_other_writers_segments_and_drops_vanished_ones(mem_root: str) -> None:
    clock = FakeClock()
    ours = ShadowLogWriter(mem_root, "classify", flush_rows=5, flush_seconds=1e9, clock=clock)
    ours.retention.relist_seconds, ours.retention.max_bytes = math.inf, 10**9
    for i in range(10):
        clock.now += 1
        ours.append(shadow_record(i))
    assert ours.enforce_retention() == 0  # indexed: our two segments
    theirs = ShadowLogWriter(mem_root, "classify", flush_rows=5, flush_seconds=1e9, clock=clock)
    for i in range(10, 20):
        clock.now += 1
        theirs.append(shadow_record(i))
    fs, _ = fsspec.core.url_to_fs(mem_root)
    fs.rm(segments(mem_root)[0].path)  # another writer's retention removed our oldest
    on_disk = segments(mem_root)
    ours.retention.max_bytes = sum(s.size for s in on_disk) - 1  # three segments on disk: one too many
    assert ours.enforce_retention() == 0  # not re-listed yet: the index holds our two only
    ours.retention.relist_seconds = 0.0
    assert ours.enforce_retention() == 1  # re-listed: three segments known, the oldest goes
    assert [s.path for s in segments(mem_root)] == [s.path for s in on_disk[-2:]]
