"""A user's own texts to distil on: a CSV, JSONL or Parquet file, labelled or not.

Most users distil on unlabelled traffic of their own: then every label is `UNLABELLED` and the
teacher's soft outputs are the only target (pure KD). A label column, when present, holds the
teacher's label names (or their indices).

Example::

    data = read_texts(Path("tickets.jsonl"), label_names=["billing", "bug", "other"])
    data.texts[:2], data.labels[:2]   # ['My invoice is wrong', ...], [-1, -1] when unlabelled
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet

from distill.corpora import UNLABELLED, LabelledTexts

FORMATS = (".csv", ".jsonl", ".parquet")


class DataFileError(ValueError):
    """A data file that cannot be read as asked; the message says what is wrong and what to do."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_pinned(
    path: Path,
    sha256: str | None,
    label_names: list[str],
    text_column: str = "text",
    label_column: str = "label",
) -> LabelledTexts:
    """`read_texts` of a file a student was built from, refused if it changed since (`sha256`, None: not
    pinned): a re-distillation replays and gates on the very texts its line started from."""
    data = read_texts(path, label_names, text_column, label_column)
    if sha256 is not None and file_sha256(path) != sha256:
        raise DataFileError(
            f"{path} changed since a student was distilled from it (sha256 {sha256[:12]}...): restore "
            "it, or distil a new student from the new file (kdgate distill --data)"
        )
    return data


def read_table(path: Path) -> pa.Table:
    """The file as a table, by its suffix."""
    if not path.is_file():
        raise DataFileError(f"{path} is not a file: pass a CSV, JSONL or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pyarrow.csv.read_csv(path)
        if suffix in (".jsonl", ".json"):
            return pyarrow.json.read_json(path)
        if suffix == ".parquet":
            return pyarrow.parquet.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFileError(f"{path} does not read as {suffix[1:]}: {str(exc).splitlines()[0]}") from exc
    raise DataFileError(f"{path}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}")


def read_texts(
    path: Path, label_names: list[str], text_column: str = "text", label_column: str = "label"
) -> LabelledTexts:
    """The non-empty texts of `text_column`, labelled from `label_column` if the file has one (a label
    name of `label_names`, or its index), else `UNLABELLED`."""
    table = read_table(path)
    columns = table.column_names
    if text_column not in columns:
        raise DataFileError(
            f"{path} has no column {text_column!r} (it has {', '.join(columns)}): name it with --text-col"
        )
    texts = table.column(text_column).to_pylist()
    raw = table.column(label_column).to_pylist() if label_column in columns else [None] * len(texts)
    kept: list[str] = []
    labels: list[int] = []
    for row, (text, label) in enumerate(zip(texts, raw, strict=True), start=1):
        if not isinstance(text, str) or not text.strip():
            continue
        kept.append(text.strip())
        labels.append(UNLABELLED if label is None else _label_index(label, label_names, path, row))
    if not kept:
        raise DataFileError(f"{path} holds no non-empty text in column {text_column!r}")
    if UNLABELLED in labels and any(label != UNLABELLED for label in labels):
        raise DataFileError(f"{path}: some rows have a {label_column!r} and some do not: label all or none")
    return LabelledTexts(path.name, kept, labels, list(label_names))


def _label_index(label: object, label_names: list[str], path: Path, row: int) -> int:
    if isinstance(label, str) and label in label_names:
        return label_names.index(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(label_names):
        return label
    raise DataFileError(
        f"{path} row {row}: label {label!r} is not one of the teacher's labels ({', '.join(label_names)})"
    )
