"""The shadow's CPU budget: how long it pauses after a batch (pure) and that it keeps to it (real)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.shadow import _cpu_timed, pause_for_budget


@given(st.floats(0.0, 10.0), st.floats(0.01, 0.99))
def test_busy_plus_pause_averages_the_budget(cpu: float, budget: float) -> None:
    pause = pause_for_budget(cpu, budget)
    assert pause >= 0.0
    if cpu > 0.0:
        assert cpu / (cpu + pause) == pytest.approx(budget)


@pytest.mark.parametrize("budget", [None, 1.0, 2.0])
def test_no_budget_or_a_whole_core_never_pauses(budget: float | None) -> None:
    assert pause_for_budget(0.5, budget) == 0.0


def test_cpu_time_counts_computing_not_waiting() -> None:
    def spin_then_sleep(texts: list[str]) -> np.ndarray:
        until = time.thread_time() + 0.05
        while time.thread_time() < until:
            pass
        time.sleep(0.2)  # waiting costs no budget
        return np.zeros((len(texts), 3))

    logits, cpu = _cpu_timed(spin_then_sleep, ["a", "b"])
    assert logits.shape == (2, 3)
    assert 0.05 <= cpu < 0.15
