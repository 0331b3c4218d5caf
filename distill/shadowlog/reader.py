"""Shadow log reader: records as an Arrow table, and per-model stats (``kdgate shadow stats``).

Only finished ``seg-*.parquet`` files are read; temp files of a writer in progress (or of a crashed one)
are never seen. A segment that cannot be read is skipped and reported through ``on_skip`` (default: a
log line), so one bad object never hides the rest of the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from distill.objectstore import is_local
from distill.shadowlog.schema import SHADOW_SCHEMA
from distill.shadowlog.segments import Segment, list_segments, task_dir

log = logging.getLogger(__name__)

OnSkip = Callable[[str, BaseException], None]
# Segments fetched at once from an object store: a few MB each at most (a flush's rows), so a batch
# stays well under a hundred MB in memory.
FETCH_BATCH = 64
TimeBound = float | datetime | None


def read_shadow(
    root: str,
    task: str,
    *,
    since: TimeBound = None,
    until: TimeBound = None,
    models: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    on_skip: OnSkip | None = None,
) -> pa.Table:
    """Records of ``task`` with ``since <= ts < until`` (epoch seconds or aware datetimes), served by one
    of ``models``; all columns unless ``columns`` is given. Rows come in segment (time) order.

    Example::

        t = read_shadow("/var/lib/kdgate/shadow", "classify", since=time.time() - 86400,
                        models=["student-a"], columns=["request_id", "teacher_logits"])
    """
    if columns is not None:
        unknown = set(columns) - set(SHADOW_SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown shadow log columns: {sorted(unknown)}")
    cols = list(columns) if columns is not None else None
    tables = [t for _, t in _scan(root, task, since, until, models, cols, on_skip)]
    if not tables:
        schema = SHADOW_SCHEMA if cols is None else pa.schema([SHADOW_SCHEMA.field(c) for c in cols])
        return schema.empty_table()
    # promote: segments written by an older schema version lack newer (nullable) columns
    return pa.concat_tables(tables, promote_options="default")


def shadow_stats(
    root: str,
    task: str,
    *,
    since: TimeBound = None,
    until: TimeBound = None,
    on_skip: OnSkip | None = None,
) -> list[dict[str, Any]]:
    """Per served model: ``records``, ``agreement`` (mean of non-null ``agree``; None when there is none),
    ``mean_kl`` (None when no KL), ``bytes`` on disk (each segment's size split by its rows),
    ``first_ts`` / ``last_ts`` (epoch seconds). Sorted by model.

    Example::

        for s in shadow_stats("/var/lib/kdgate/shadow", "classify"):
            print(s["served_model"], s["records"], s["agreement"], s["bytes"])
    """
    acc: dict[str, dict[str, float]] = {}
    cols = ["served_model", "agree", "kl", "ts"]
    for seg, t in _scan(root, task, since, until, None, cols, on_skip):
        if t.num_rows == 0:
            continue
        t = t.set_column(t.column_names.index("kl"), "kl", pc.cast(t["kl"], pa.float64()))
        g = t.group_by("served_model").aggregate(
            [
                ("served_model", "count"),
                ("agree", "count"),
                ("agree", "sum"),
                ("kl", "count"),
                ("kl", "sum"),
                ("ts", "min"),
                ("ts", "max"),
            ]
        )
        for row in g.to_pylist():
            a = acc.setdefault(row["served_model"], _zero())
            n = row["served_model_count"]
            a["records"] += n
            a["agree_n"] += row["agree_count"]
            a["agree_sum"] += row["agree_sum"] or 0
            a["kl_n"] += row["kl_count"]
            a["kl_sum"] += row["kl_sum"] or 0.0
            a["bytes"] += seg.size * n / t.num_rows
            a["first_ts"] = min(a["first_ts"], row["ts_min"].timestamp())
            a["last_ts"] = max(a["last_ts"], row["ts_max"].timestamp())
    return [
        {
            "served_model": model,
            "records": int(a["records"]),
            # No comparisons is "no data", not perfect agreement.
            "agreement": a["agree_sum"] / a["agree_n"] if a["agree_n"] else None,
            "mean_kl": a["kl_sum"] / a["kl_n"] if a["kl_n"] else None,
            "bytes": round(a["bytes"]),
            "first_ts": a["first_ts"],
            "last_ts": a["last_ts"],
        }
        for model, a in sorted(acc.items())
    ]


def _zero() -> dict[str, float]:
    return {
        "records": 0, "agree_n": 0, "agree_sum": 0, "kl_n": 0, "kl_sum": 0.0, "bytes": 0.0,
        "first_ts": float("inf"), "last_ts": float("-inf"),
    }  # fmt: skip


def _scan(
    root: str,
    task: str,
    since: TimeBound,
    until: TimeBound,
    models: Sequence[str] | None,
    columns: list[str] | None,
    on_skip: OnSkip | None,
) -> Iterator[tuple[Segment, pa.Table]]:
    fs, directory = task_dir(root, task)
    since_ms, until_ms = _ms(since), _ms(until)
    conds = []
    ts = ds.field("ts")
    if since_ms is not None:
        conds.append(ts >= pa.scalar(since_ms, pa.int64()).cast(SHADOW_SCHEMA.field("ts").type))
    if until_ms is not None:
        conds.append(ts < pa.scalar(until_ms, pa.int64()).cast(SHADOW_SCHEMA.field("ts").type))
    if models is not None:
        conds.append(ds.field("served_model").isin(list(models)))
    expr = None
    for c in conds:
        expr = c if expr is None else expr & c
    # The name's time is >= every ts inside (the writer guarantees it), so older segments are skipped
    # without opening them.
    wanted = [s for s in list_segments(fs, directory) if since_ms is None or round(s.time * 1000) >= since_ms]
    for seg, source in _sources(fs, wanted):
        try:
            if isinstance(source, BaseException):
                raise source
            if isinstance(source, bytes):
                table = pq.read_table(pa.BufferReader(source), columns=columns, filters=expr)
            else:
                table = pq.read_table(source, filesystem=fs, columns=columns, filters=expr)
        except FileNotFoundError:
            continue  # deleted by retention since the listing: not an error
        except Exception as e:  # a corrupt or foreign file must not hide the rest of the log
            (on_skip or _log_skip)(seg.path, e)
            continue
        yield seg, table


def _sources(
    fs: fsspec.AbstractFileSystem, segments: list[Segment]
) -> Iterator[tuple[Segment, str | bytes | BaseException]]:
    """Each segment with what it is read from: its path on a filesystem; on an object store its bytes,
    or the error fetching them. Read one by one, every segment on S3 costs a few sequential requests
    (its size, its footer, its columns); fetched whole, `FETCH_BATCH` at a time, they go concurrently."""
    if is_local(fs):
        yield from ((seg, seg.path) for seg in segments)
        return
    for start in range(0, len(segments), FETCH_BATCH):
        batch = segments[start : start + FETCH_BATCH]
        fetched = fs.cat([seg.path for seg in batch], on_error="return")
        for seg in batch:
            yield seg, fetched.get(fs._strip_protocol(seg.path), FileNotFoundError(seg.path))


def _log_skip(path: str, err: BaseException) -> None:
    log.error("shadow log: skipped unreadable segment %s: %s", path, err)


def _ms(t: TimeBound) -> int | None:
    if t is None:
        return None
    return round((t.timestamp() if isinstance(t, datetime) else float(t)) * 1000)
