"""What a shadow record is: the Arrow schema, the dict the writer takes, and how it becomes Parquet.

This is the data contract between the gateway (writer) and re-distillation (reader); see "Shadow log"
in DESIGN.md. Choices:

- ``ts`` is ``timestamp[ms, UTC]`` — readable by every Parquet tool, and reader filters push down on it.
  Records carry it as float epoch seconds (what ``time.time()`` returns).
- the teacher payload is float16 (3 class logits: 6 bytes raw); the student's ``served_probs`` stay
  float32 because KL(teacher ‖ student) is sensitive to small student probabilities.
- zstd; dictionary encoding only for the low-cardinality columns (on unique floats and ids a dictionary
  page only adds bytes: ~55 vs ~65 bytes per record for the numeric part).
- column statistics only on ``ts`` and ``served_model``: statistics store min/max *values*, which for
  ``input_text`` would leak inputs past redaction and are useless for filtering anyway.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2  # 2: served_ids (the generated token ids of /generate)

SHADOW_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("served_model", pa.string(), nullable=False),
        pa.field("teacher_model", pa.string(), nullable=False),
        pa.field("input_text", pa.string()),  # null when redact_inputs is on
        pa.field("input_sha256", pa.string(), nullable=False),  # hex of the UTF-8 input
        pa.field("served_label", pa.string(), nullable=False),
        pa.field("served_probs", pa.list_(pa.float32()), nullable=False),  # (C,)
        pa.field("teacher_logits", pa.list_(pa.float16())),  # (C,); null when the teacher served it
        pa.field("agree", pa.bool_()),
        pa.field("kl", pa.float32()),  # KL(teacher ‖ served)
        pa.field("latency_ms", pa.float32(), nullable=False),
        # Generate-ready part, null for /classify: per generated position, the teacher's top-k.
        pa.field("teacher_topk_ids", pa.list_(pa.list_(pa.int32()))),  # (T, k)
        pa.field("teacher_topk_logprobs", pa.list_(pa.list_(pa.float16()))),  # (T, k)
        pa.field("teacher_tail_mass", pa.list_(pa.float16())),  # (T,) probability outside the top-k
        pa.field("token_agree", pa.list_(pa.bool_())),  # (T,)
        pa.field("served_ids", pa.list_(pa.int32())),  # (T,) the served model's completion token ids
    ],
    metadata={"kdgate.shadow.schema_version": str(SCHEMA_VERSION)},
)

REQUIRED_KEYS = ("request_id", "served_model", "teacher_model", "served_label", "served_probs", "latency_ms")
OPTIONAL_KEYS = (
    "ts", "task", "input_text", "input_sha256", "teacher_logits", "agree", "kl",
    "teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_mass", "token_agree", "served_ids",
)  # fmt: skip
# Array fields: (numpy dtype that validates the value at append, expected ndim).
_ARRAYS: dict[str, tuple[type[np.generic], int]] = {
    "served_probs": (np.float32, 1),
    "teacher_logits": (np.float32, 1),
    "teacher_topk_ids": (np.int32, 2),
    "teacher_topk_logprobs": (np.float32, 2),
    "teacher_tail_mass": (np.float32, 1),
    "token_agree": (np.bool_, 1),
    "served_ids": (np.int32, 1),
}

PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "write_statistics": ["ts", "served_model"],
    "use_dictionary": ["schema_version", "task", "served_model", "teacher_model", "served_label"],
}


def normalize_record(
    record: Mapping[str, Any], task: str, *, redact_inputs: bool, now: Callable[[], float]
) -> dict[str, Any]:
    """Validate one record dict and turn it into a row of plain values (``ts`` in epoch ms).

    Raises ``ValueError``/``TypeError`` on a bad record, so a bad record is refused at ``append`` and can
    never make a whole segment unwritable. ``input_sha256`` is computed from ``input_text`` when given;
    with ``redact_inputs`` only the hash is kept.

    Example::

        row = normalize_record({"request_id": "r1", "served_model": "s@1", "teacher_model": "t@1",
                                "input_text": "hi", "served_label": "pos", "served_probs": [0.3, 0.7],
                                "latency_ms": 2.0}, "classify", redact_inputs=True, now=time.time)
    """
    unknown = set(record) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    missing = [k for k in REQUIRED_KEYS if record.get(k) is None]
    if unknown or missing:
        raise ValueError(f"shadow record: unknown keys {sorted(unknown)}, missing {missing}")
    if record.get("task", task) != task:
        raise ValueError(f"shadow record for task {record['task']!r} sent to the {task!r} log")
    row: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "task": task}
    for key in ("request_id", "served_model", "teacher_model", "served_label"):
        if not isinstance(record[key], str):
            raise TypeError(f"shadow record: {key} must be str")
        row[key] = record[key]
    ts = record.get("ts")
    ts = now() if ts is None else ts.timestamp() if isinstance(ts, datetime) else float(ts)
    if not math.isfinite(ts):
        raise ValueError("shadow record: ts must be finite")
    row["ts"] = round(ts * 1000)
    text, digest = record.get("input_text"), record.get("input_sha256")
    if text is not None:
        if not isinstance(text, str):
            raise TypeError("shadow record: input_text must be str")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if not isinstance(digest, str):
        raise ValueError("shadow record: needs input_text or input_sha256")
    row["input_text"] = None if redact_inputs else text
    row["input_sha256"] = digest
    row["latency_ms"] = float(record["latency_ms"])
    row["kl"] = None if record.get("kl") is None else float(record["kl"])
    row["agree"] = None if record.get("agree") is None else bool(record["agree"])
    for key, (dtype, ndim) in _ARRAYS.items():
        value = record.get(key)
        if value is not None:
            arr = np.asarray(value, dtype=dtype)
            if arr.ndim != ndim:
                raise ValueError(f"shadow record: {key} must have {ndim} dimension(s), got shape {arr.shape}")
            value = arr.tolist()
        row[key] = value
    return row


def build_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Arrow table in ``SHADOW_SCHEMA`` from rows made by ``normalize_record``."""
    arrays = []
    for f in SHADOW_SCHEMA:
        values = [r[f.name] for r in rows]
        staging = pa.int64() if f.name == "ts" else _f16_as_f32(f.type)
        arrays.append(pa.array(values, staging).cast(f.type))  # no-op cast unless ts or float16 inside
    return pa.Table.from_arrays(arrays, schema=SHADOW_SCHEMA)


def _f16_as_f32(t: pa.DataType) -> pa.DataType:
    # pyarrow cannot build float16 from Python floats, but casts float32 -> float16 (round to nearest).
    if pa.types.is_list(t):
        return pa.list_(_f16_as_f32(t.value_type))
    return pa.float32() if pa.types.is_float16(t) else t
