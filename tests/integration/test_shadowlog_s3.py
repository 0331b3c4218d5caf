"""The shadow log on a real S3 API (moto in server mode): each replica writes under its own prefix and
every reader reads them all; an unreachable bucket costs counted drops, never an exception to the
appender, and writing resumes when the bucket is back."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from deploy.local.s3 import S3Server
from distill.shadowlog.reader import read_shadow, shadow_stats
from distill.shadowlog.segments import list_segments, task_dir
from distill.shadowlog.writer import ShadowLogWriter
from tests.support import poll, shadow_record


def test_segments_of_two_replicas_are_under_their_own_prefixes_and_read_back_together(s3_bucket: str) -> None:
    root = f"{s3_bucket}/shadow"
    for replica, model in (("gw-a", "student@1"), ("gw-b", "student@2")):
        with ShadowLogWriter(root, "classify", replica=replica, flush_rows=4) as writer:
            for i in range(10):
                writer.append(shadow_record(i, model=model, request_id=f"{replica}-{i}"))

    fs, directory = task_dir(root, "classify")
    folders = {seg.path.rsplit("/", 2)[-2] for seg in list_segments(fs, directory)}
    assert folders == {"gw-a", "gw-b"}
    logged = read_shadow(root, "classify", columns=["request_id"])["request_id"].to_pylist()
    assert sorted(logged) == sorted(f"{r}-{i}" for r in ("gw-a", "gw-b") for i in range(10))
    stats = {s["served_model"]: s["records"] for s in shadow_stats(root, "classify")}
    assert stats == {"student@1": 10, "student@2": 10}


def test_an_unreachable_bucket_drops_and_counts_records_and_writing_resumes_when_it_is_back(
    s3_bucket: str, s3_server: S3Server
) -> None:
    root = f"{s3_bucket}/shadow"
    dropped: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_drop(rows: list[dict[str, Any]], reason: str) -> None:
        with lock:
            dropped.extend((row["request_id"], reason) for row in rows)

    writer = ShadowLogWriter(
        root, "classify", replica="gw-a", flush_rows=5, max_pending_rows=10, background=True, on_drop=on_drop
    ).start()
    for i in range(5):
        writer.append(shadow_record(i))
    poll(lambda: writer.counters.rows_written == 5, "the first segment written")

    s3_server.stop()
    try:
        for i in range(5, 40):
            writer.append(shadow_record(i))  # never raises, never writes: the flusher thread does
        poll(lambda: len(dropped) >= 20, "records dropped while the bucket is unreachable")
    finally:
        s3_server.restart()
    assert {reason for _, reason in dropped} == {"storage"}

    for i in range(40, 45):
        writer.append(shadow_record(i))
    writer.close()  # flushes what waited out the outage
    counters = writer.counters
    assert counters.rows_written + counters.rows_dropped == counters.rows_appended == 45
    logged = set(read_shadow(root, "classify", columns=["request_id"])["request_id"].to_pylist())
    assert logged == {f"r{i}" for i in range(45)} - {rid for rid, _ in dropped}
    assert {f"r{i}" for i in range(40, 45)} <= logged  # written after the bucket came back


def test_a_writer_opened_while_the_bucket_is_unreachable_writes_once_it_is_back(
    s3_bucket: str, s3_server: S3Server
) -> None:
    root = f"{s3_bucket}/shadow"
    s3_server.stop()
    try:
        writer = ShadowLogWriter(root, "classify", replica="gw-a", flush_rows=5, background=True).start()
        for i in range(5):
            writer.append(shadow_record(i))
    finally:
        s3_server.restart()
    writer.close()
    assert writer.counters.rows_written == 5
    assert len(read_shadow(root, "classify", columns=["request_id"])) == 5


def test_retention_lists_the_bucket_at_start_not_at_every_segment(
    s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = f"{s3_bucket}/shadow"
    with caplog.at_level(logging.INFO, logger="werkzeug"):  # moto's access log: one line per request
        writer = ShadowLogWriter(root, "classify", replica="gw-a", flush_rows=2, max_bytes=2**30).start()
        for i in range(20):
            writer.append(shadow_record(i))
        writer.close()
    assert writer.counters.segments_written == 10
    listings = [r.getMessage() for r in caplog.records if "list-type=2" in r.getMessage()]
    # At start only: the writer's folder (for a crashed writer's leftovers) and retention's index (one
    # flat listing, which s3fs frames with a few look-ups). A segment is one PUT and nothing else.
    assert len(listings) <= 4, listings
    puts = [m for r in caplog.records if (m := r.getMessage()).split('"')[1].startswith("PUT ")]
    assert len(puts) == 10, puts
