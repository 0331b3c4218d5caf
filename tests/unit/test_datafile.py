"""A user's data file (distill/datafile.py): the three formats, labels by name or index or none, and
each refusal naming what to fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet
import pytest

from distill.corpora import UNLABELLED
from distill.datafile import DataFileError, file_sha256, read_pinned, read_texts

LABELS = ["neg", "pos"]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_three_formats_read_alike(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('text,label\n"good, really",pos\nbad,neg\n')
    write_jsonl(
        tmp_path / "d.jsonl", [{"text": "good, really", "label": "pos"}, {"text": "bad", "label": "neg"}]
    )
    table = pa.table({"text": ["good, really", "bad"], "label": [1, 0]})
    pyarrow.parquet.write_table(table, tmp_path / "d.parquet")
    for name in ("d.csv", "d.jsonl", "d.parquet"):
        data = read_texts(tmp_path / name, LABELS)
        assert (data.texts, data.labels, data.labelled) == (["good, really", "bad"], [1, 0], True), name


def test_unlabelled_texts_are_pure_kd_and_empty_ones_are_skipped(tmp_path: Path) -> None:
    rows = [{"body": "first"}, {"body": "  "}, {"body": None}, {"body": "second "}]
    data = read_texts(write_jsonl(tmp_path / "u.jsonl", rows), LABELS, text_column="body")
    assert data.texts == ["first", "second"]
    assert data.labels == [UNLABELLED, UNLABELLED] and not data.labelled


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"body": "x"}], "no column 'text' (it has body): name it with --text-col"),
        (
            [{"text": "x", "label": "maybe"}],
            "row 1: label 'maybe' is not one of the teacher's labels (neg, pos)",
        ),
        ([{"text": "x", "label": 2}], "label 2 is not one of"),
        ([{"text": "x", "label": "pos"}, {"text": "y"}], "label all or none"),
        ([{"text": " "}], "no non-empty text"),
    ],
)
def test_a_bad_file_is_refused_naming_what_to_fix(
    tmp_path: Path, rows: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(DataFileError, match=re.escape(message)):
        read_texts(write_jsonl(tmp_path / "bad.jsonl", rows), LABELS)


def test_an_unreadable_or_unknown_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="is not a file"):
        read_texts(tmp_path / "missing.csv", LABELS)
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataFileError, match=re.escape("unknown format '.txt'")):
        read_texts(tmp_path / "d.txt", LABELS)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataFileError, match="does not read as parquet"):
        read_texts(tmp_path / "broken.parquet", LABELS)


def test_a_pinned_file_reads_until_it_changes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a"}, {"text": "b"}])
    pin = file_sha256(path)
    assert read_pinned(path, pin, LABELS).texts == ["a", "b"]
    write_jsonl(path, [{"text": "a"}, {"text": "c"}])
    with pytest.raises(DataFileError, match="changed since a student was distilled from it"):
        read_pinned(path, pin, LABELS)
    assert read_pinned(path, None, LABELS).texts == ["a", "c"]  # not pinned: read as it is
