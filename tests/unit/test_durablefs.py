"""Unit tests of durablefs: the one atomic write (temp, fsync, rename, fsync dir) every state file uses."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import IO

import pytest

from durablefs import write_json, write_text, write_with
from durablefs.shared import SharedDocument


def test_a_write_replaces_the_file_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "traffic.json"
    write_json(target, {"classify": {"a@1": 100}})
    write_json(target, {"classify": {"a@1": 95, "b@1": 5}})
    assert json.loads(target.read_text()) == {"classify": {"a@1": 95, "b@1": 5}}
    assert [p.name for p in tmp_path.iterdir()] == ["traffic.json"]


def test_a_writer_that_fails_midway_leaves_the_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json(target, {"phase": "progressing"})

    def half_then_crash(handle: IO[bytes]) -> None:
        handle.write(b'{"phase": "prom')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(target, half_then_crash)
    assert json.loads(target.read_text()) == {"phase": "progressing"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_secret_is_written_with_its_mode_from_the_first_byte(tmp_path: Path) -> None:
    target = tmp_path / "admin.token"
    write_text(target, "s3cret\n", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "s3cret\n"


def test_a_shared_document_sees_another_writers_change_once_its_poll_is_due(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    reader, writer = SharedDocument(path, poll_seconds=3600), SharedDocument(path)
    assert reader.read() == {}
    writer.update(lambda doc: doc | {"classify": {"s@1": 100}})
    assert reader.read() == {}  # served from memory until the poll is due
    reader.poll_seconds = 0
    assert reader.read() == {"classify": {"s@1": 100}}
    writer.update(lambda doc: doc | {"classify": {"s@2": 100}})
    assert reader.read() == {"classify": {"s@2": 100}}  # replaced file, new inode: seen at once


def test_an_exclusive_write_never_replaces_a_file_that_exists(tmp_path: Path) -> None:
    target = tmp_path / "admin.token"
    write_text(target, "first\n", exclusive=True)
    with pytest.raises(FileExistsError):
        write_text(target, "second\n", exclusive=True)
    assert target.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["admin.token"]


def test_an_exclusive_write_on_a_filesystem_without_hard_links_still_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")  # as vfat answers link(2)

    monkeypatch.setattr(os, "link", no_links)
    write_text(tmp_path / "admin.token", "first\n", mode=0o600, exclusive=True)
    assert (tmp_path / "admin.token").read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["admin.token"]
