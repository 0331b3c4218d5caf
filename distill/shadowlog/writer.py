"""Shadow log writer: buffers records and writes them as Parquet segments (DESIGN.md, "Shadow log").

Segments live under ``<root>/<task>/`` through fsspec, so a local path, ``s3://…`` or ``memory://`` work
unchanged. Each flush writes ONE segment, ``seg-<utc ms>-<seq>-<writer id>.parquet``: on a filesystem
to ``.tmp-<pid>-<uuid>.parquet`` first, renamed once whole; on an object store with one PUT, which publishes
the whole object or nothing (a rename there is a copy and a delete, and s3fs looks each name up: five
requests more per segment). A crash loses at most the unflushed rows and never leaves a half-written
segment under a name a reader looks at. Segment names are in ``segments.py``, retention in
``retention.py``, the record format in ``schema.py``, readers in ``reader.py``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from distill.objectstore import is_local
from distill.shadowlog.retention import Retention
from distill.shadowlog.schema import PARQUET_OPTIONS, build_table, normalize_record
from distill.shadowlog.segments import orphaned_temp, replica_dir, segment_name, task_dir, temp_name

log = logging.getLogger(__name__)


class ShadowLogClosed(RuntimeError):
    """append() after close()."""


@dataclass
class WriterCounters:
    rows_appended: int = 0
    rows_written: int = 0
    rows_dropped: int = 0  # dropped because storage failed for longer than max_pending_rows allows
    segments_written: int = 0
    segments_deleted: int = 0
    flush_errors: int = 0


@dataclass(eq=False)
class _Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    first_at: float = 0.0  # writer clock at the first row, for flush_seconds
    name: str | None = None  # set when sealed; the same name on every retry makes a retry idempotent


class ShadowLogWriter:
    """Buffers shadow records and writes them as Parquet segments; thread-safe.

    Example::

        w = ShadowLogWriter("s3://bucket/kdgate/shadow", "classify", max_bytes=10 * 2**30)
        w.start()  # optional daemon thread so an idle log still flushes after flush_seconds
        w.append({"request_id": "r1", "served_model": "student-a", "teacher_model": "teacher",
                  "input_text": "great movie", "served_label": "pos", "served_probs": [0.1, 0.2, 0.7],
                  "teacher_logits": [-1.0, 0.5, 2.0], "agree": True, "kl": 0.02, "latency_ms": 3.1})
        w.close()  # graceful shutdown: flushes everything

    ``close()`` may be called from a signal handler (then return or ``sys.exit()`` from the handler; not
    ``os._exit()``). One writer per folder (``<root>/<task>``, or a replica's in it): its start deletes
    leftover temp files.
    ``protect_after`` (epoch seconds, or a callable returning them) protects segments that may hold
    records at or after that time — e.g. the window an unfinished training run still reads. ``fs`` is
    the filesystem ``root`` is on, when it needs options of its own; by default it is resolved from
    ``root``'s URL (``distill/objectstore.py``).

    Shared storage: ``replica`` names this writer's folder under ``<root>/<task>/`` (every reader reads
    all of them), and ``background=True`` (with ``start()``) makes ``append`` only buffer, leaving
    every write to the flusher thread, so a slow or unreachable store never holds up the appender.
    While the store fails, sealed rows wait (up to ``max_pending_rows``); beyond that the oldest are
    dropped and handed to ``on_drop(rows, "storage")``; rows a failed ``close()`` could not write go
    there too. Both are counted in ``counters.rows_dropped``.
    """

    def __init__(
        self,
        root: str,
        task: str,
        *,
        flush_rows: int = 512,
        flush_seconds: float = 2.0,
        max_bytes: int | None = None,
        max_age_seconds: float | None = None,
        protect_after: float | Callable[[], float | None] | None = None,
        redact_inputs: bool = False,
        compression: str = "zstd",
        max_pending_rows: int | None = None,
        clock: Callable[[], float] = time.time,
        fs: fsspec.AbstractFileSystem | None = None,
        replica: str | None = None,
        background: bool = False,
        on_drop: Callable[[list[dict[str, Any]], str], None] | None = None,
    ) -> None:
        if flush_rows < 1 or flush_seconds <= 0:
            raise ValueError("flush_rows must be >= 1 and flush_seconds > 0")
        self.task = task
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.redact_inputs = redact_inputs
        self.compression = compression
        # Rows kept while storage is failing; beyond this the oldest sealed batches are dropped (counted).
        self.max_pending_rows = max_pending_rows if max_pending_rows is not None else 20 * flush_rows
        self.counters = WriterCounters()
        self._clock = clock
        self._fs, log_dir = task_dir(root, task, fs)
        self._dir = replica_dir(log_dir, replica)
        self.background = background
        self._on_drop = on_drop
        self._wake = threading.Event()
        self._failing = False  # the store failed at the last write: said once, and when it is back
        self._id = uuid.uuid4().hex[:8]
        self._seq = 0
        # RLocks and the per-thread depth let close() run from a signal handler that interrupted
        # this writer in the main thread: it is deferred to the end of the interrupted call.
        self._lock = threading.RLock()  # open batch and sealed list
        self._io_lock = threading.RLock()  # one writer of segments at a time, in seal order
        self._local = threading.local()
        self._close_requested = False
        self._closed = False
        self._open = _Batch()
        self._sealed: list[_Batch] = []
        self._writing: _Batch | None = None  # the sealed batch a write is under way for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.retention = Retention(
            self._fs,
            log_dir,
            max_bytes=max_bytes,
            max_age_seconds=max_age_seconds,
            protect_after=protect_after,
            clock=clock,
        )
        if is_local(self._fs):  # an object store has no folders to make (s3fs would look for the bucket)
            self._fs.makedirs(self._dir, exist_ok=True)
        try:
            self._remove_temp_files()
        except Exception as exc:
            if is_local(self._fs):
                raise
            # An object store unreachable now may be back by the first flush: rows wait for it.
            log.error("shadow log: %s unreachable at start: %s", self._dir, exc)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def directory(self) -> str:
        return self._dir

    def append(self, record: Mapping[str, Any]) -> None:
        """Buffer one record; flushes when ``flush_rows`` rows or ``flush_seconds`` are due.

        Keys: ``schema.REQUIRED_KEYS`` and ``OPTIONAL_KEYS``; a bad record raises here.
        """
        row = normalize_record(record, self.task, redact_inputs=self.redact_inputs, now=self._clock)
        self._enter()
        try:
            with self._lock:
                if self._closed:
                    raise ShadowLogClosed("shadow log writer is closed")
                if not self._open.rows:
                    self._open.first_at = self._clock()
                self._open.rows.append(row)
                self.counters.rows_appended += 1
                due = self._due()
                if due:
                    self._seal()
            if due and self.background and self._thread is not None:
                self._wake.set()
            elif due:
                try:
                    self._write_sealed()
                except Exception:
                    # The rows stay sealed and are retried by the next flush; the appender is not at fault.
                    log.exception("shadow log flush failed in %s", self._dir)
        finally:
            self._exit()

    def maybe_flush(self) -> int:
        """Flush if ``flush_seconds`` passed since the oldest buffered row. Returns rows written."""
        self._enter()
        try:
            with self._lock:
                if self._due():
                    self._seal()
            return self._write_sealed() if self._sealed else 0
        finally:
            self._exit()

    def flush(self) -> int:
        """Write everything buffered now (one segment per sealed batch). Raises on storage errors."""
        self._enter()
        try:
            with self._lock:
                self._seal()
            return self._write_sealed()
        finally:
            self._exit()

    def start(self) -> ShadowLogWriter:
        """Start a daemon thread calling ``maybe_flush()``, so an idle log still meets ``flush_seconds``.
        With retention on, the directory is listed here, at start-up, rather than after the first flush
        under load (listing 50,000 segments costs ~1.6 s)."""
        if self._thread is None:
            if self.retention.enabled:
                try:
                    with self._io_lock:
                        self.retention.index()
                except Exception:  # storage unreachable at start: retention lists at its first run
                    log.exception("shadow log could not list %s at start", self._dir)
            self._thread = threading.Thread(target=self._run, name=f"shadowlog-{self.task}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting records and flush everything; idempotent."""
        if getattr(self._local, "depth", 0) > 0:
            self._close_requested = True  # signal handler inside our own call: finish there
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self.flush()
        except Exception:
            if self._on_drop is None:
                raise
            log.error("shadow log: storage failed at close; %d rows not written", self._discard())

    def _discard(self) -> int:
        """Drops every buffered row (the store is gone for good); the count."""
        with self._lock:
            batches, self._sealed = [*self._sealed, self._open], []
            self._open = _Batch()
        rows = [row for batch in batches for row in batch.rows]
        self._dropped(rows)
        return len(rows)

    def _dropped(self, rows: list[dict[str, Any]]) -> None:
        self.counters.rows_dropped += len(rows)
        if self._on_drop is not None and rows:
            self._on_drop(rows, "storage")

    def __enter__(self) -> ShadowLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete the oldest segments past the size or age limits (``retention.py``); the count."""
        with self._io_lock:
            deleted = self.retention.enforce(now)
        self.counters.segments_deleted += deleted
        return deleted

    # -- internals ---------------------------------------------------------------------------------

    def _enter(self) -> None:
        self._local.depth = getattr(self._local, "depth", 0) + 1

    def _exit(self) -> None:
        self._local.depth -= 1
        if self._local.depth == 0 and self._close_requested and not self._closed:
            self.close()

    def _due(self) -> bool:
        rows = self._open.rows
        return bool(rows) and (
            len(rows) >= self.flush_rows or self._clock() - self._open.first_at >= self.flush_seconds
        )

    def _seal(self) -> None:
        # Each step is idempotent: an exception raised by a signal handler between two steps leaves a
        # state that the next call (close() in a finally) completes without losing or doubling rows.
        batch = self._open
        if batch.rows and batch.name is None:
            self._seq += 1
            ts_max = max(r["ts"] for r in batch.rows)
            batch.name = segment_name(max(round(self._clock() * 1000), ts_max), self._seq, self._id)
        if batch.name is not None:
            if not any(b is batch for b in self._sealed):
                self._sealed.append(batch)
            self._open = _Batch()
        pending = sum(len(b.rows) for b in self._sealed)
        while pending > self.max_pending_rows and len(self._sealed) > 1:
            # The batch being written may yet land: dropping it would count its rows twice.
            dropped = self._sealed.pop(1 if self._sealed[0] is self._writing else 0)
            pending -= len(dropped.rows)
            self._dropped(dropped.rows)
            log.warning("shadow log: storage failing, dropped %d rows", len(dropped.rows))

    def _write_sealed(self) -> int:
        written = 0
        with self._io_lock:
            while True:
                with self._lock:
                    if not self._sealed:
                        break
                    batch = self._writing = self._sealed[0]
                try:
                    self._write_segment(batch)
                except BaseException:
                    self.counters.flush_errors += 1
                    with self._lock:
                        self._writing = None
                    raise
                with self._lock:
                    self._writing = None
                    if self._sealed and self._sealed[0] is batch:
                        self._sealed.pop(0)
                        written += len(batch.rows)
                        self.counters.rows_written += len(batch.rows)
                        self.counters.segments_written += 1
            if written:
                try:
                    self.enforce_retention()
                except Exception:  # the rows are safe on disk; retention simply runs again next flush
                    log.exception("shadow log retention failed in %s", self._dir)
        return written

    def _write_segment(self, batch: _Batch) -> None:
        assert batch.name is not None
        table = build_table(batch.rows)
        options = {**PARQUET_OPTIONS, "compression": self.compression}
        final = f"{self._dir}/{batch.name}"
        if not is_local(self._fs):
            buffer = io.BytesIO()
            pq.write_table(table, buffer, **options)
            self._fs.pipe_file(final, buffer.getvalue())
            self.retention.written(final, buffer.tell())
            return
        tmp = f"{self._dir}/{temp_name(os.getpid(), uuid.uuid4().hex)}"
        try:
            with self._fs.open(tmp, "wb") as f:
                pq.write_table(table, f, **options)
                _fsync(f)  # the rename must not publish a file whose bytes a power loss can still eat
            self._fs.mv(tmp, final)
        except BaseException:
            # Best effort: a leftover temp file is ignored by readers, and removed by the next writer
            # to start on this directory once this process is gone.
            with contextlib.suppress(Exception):
                self._fs.rm(tmp)
            raise
        self.retention.written(final)

    def _remove_temp_files(self) -> None:
        try:
            names = self._fs.ls(self._dir, detail=False)
        except FileNotFoundError:
            return
        for name in names:
            if orphaned_temp(name):
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm(name)

    def _run(self) -> None:
        tick = min(0.5, self.flush_seconds / 2)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.maybe_flush()
            except Exception as exc:  # keep the flusher alive; the rows stay sealed and are retried
                if not self._failing:  # once per outage, not every tick (the message names no secret)
                    log.error("shadow log: writing to %s failed, retrying: %s", self._dir, exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("shadow log: writing to %s works again", self._dir)
                self._failing = False


def _fsync(f: Any) -> None:
    try:
        f.flush()
        os.fsync(f.fileno())
    except (AttributeError, OSError, ValueError):  # memory://, object stores: no file descriptor
        pass
