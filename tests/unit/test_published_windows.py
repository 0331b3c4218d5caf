"""The live windows processes publish for the judge (gateway/rollouts/published.py): summed across
processes once, only for the step judged, without the silent; p99 merged within the histogram's error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from durablefs.shared import SharedDocument
from gateway.rollouts.ports import LocalSource
from gateway.rollouts.published import STALE_S, WindowBoard, combine, encode
from gateway.serving.window import LiveWindow, Totals
from rollout.model import Phase, RolloutState

NOW = 1_800_000_000.0
CANDIDATE, BASELINE = "classify-student@2", "classify-teacher@1"


def rollout(started: float = NOW - 30) -> RolloutState:
    return RolloutState(Phase.PROGRESSING, "classify", BASELINE, CANDIDATE, 0, 50, started)


def window(requests: int, latency_ms: float) -> LiveWindow:
    live = LiveWindow(600.0, clock=lambda: NOW)
    for _ in range(requests):
        live.add(CANDIDATE, latency_ms=latency_ms, requests=1, errors=0)
    return live


class Board(WindowBoard):
    """A board that stands for another process: its own key, the shared document's file."""

    def __init__(self, path: Path, live: LiveWindow, me: str, wall: list[float]) -> None:
        super().__init__(SharedDocument(path, poll_seconds=0), live, wall_clock=lambda: wall[0])
        self.me = me


def test_the_judge_sums_other_processes_once_and_only_for_the_step_it_judges(tmp_path: Path) -> None:
    wall = [NOW]
    path = tmp_path / "windows.json"
    here = Board(path, window(10, 5.0), "here", wall)
    there = Board(path, window(30, 50.0), "there", wall)
    state = rollout()
    here.publish([state])
    there.publish([state])
    source = LocalSource(here.window, here)
    seen = source.observe(state)
    assert seen.requests == 40  # its own from memory, the other's from the document, each once
    assert seen.p99_ms is not None and abs(seen.p99_ms - 50.0) / 50.0 < 0.02

    # A new step: the other's sums for the old one do not count until it publishes the new one.
    later = rollout(started=NOW)
    assert source.observe(later).requests == 10
    # A process silent for longer than STALE_S is gone.
    wall[0] = NOW + STALE_S + 1
    assert source.observe(state).requests == 10


def test_alone_the_figures_are_the_windows_own(tmp_path: Path) -> None:
    live = LiveWindow(600.0, clock=lambda: NOW)
    for ms in (1.0, 2.0, 3.0, 400.0):
        live.add(CANDIDATE, latency_ms=ms, requests=1, errors=0)
    board = WindowBoard(SharedDocument(tmp_path / "windows.json"), live)
    board.publish([rollout()])
    assert LocalSource(live, board).observe(rollout()) == LocalSource(live).observe(rollout())


def test_merged_p99_is_within_two_percent() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.lognormal(mean, 0.8, 3000) for mean in (1.0, 2.0, 3.0)]  # ms, three processes
    others = [encode(Totals(latencies_ms=list(p))) for p in parts[1:]]
    _, p99 = combine(Totals(latencies_ms=list(parts[0])), others)
    exact = float(np.percentile(np.concatenate(parts), 99))
    assert p99 is not None and abs(p99 - exact) / exact < 0.02
