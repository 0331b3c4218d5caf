"""The admin token file: the workers of `serve --workers N` create it together on a fresh state dir and
must all end up with the one token in it (a worker keeping a token of its own answers 403 to every
operator)."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

from gateway.settings import token_path
from gateway.state import ensure_token_file

WORKERS = 8


def _racer(
    state_dir: Path, start: multiprocessing.synchronize.Barrier, tokens: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    start.wait()
    tokens.put(ensure_token_file(state_dir))


def test_workers_racing_to_create_the_token_all_get_the_one_in_the_file(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, tokens = ctx.Barrier(WORKERS), ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(tmp_path, start, tokens)) for _ in range(WORKERS)]
    for racer in racers:
        racer.start()
    got = {tokens.get(timeout=30) for _ in racers}
    for racer in racers:
        racer.join(timeout=30)
    assert got == {token_path(tmp_path).read_text().strip()}
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [token_path(tmp_path).name]  # no temp file left


def test_an_existing_token_is_kept(tmp_path: Path) -> None:
    token_path(tmp_path).write_text("kept\n")
    assert ensure_token_file(tmp_path) == "kept"
