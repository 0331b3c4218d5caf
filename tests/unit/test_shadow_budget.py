"""The shadow's CPU budget: how long it pauses after a batch (pure) and that it keeps to it (real)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.shadow import _cpu_timed
from gateway.shadow_budget import SpareCpuMeter, pause_for_budget, shadow_budget


@given(st.floats(0.0, 10.0, allow_subnormal=False), st.floats(0.01, 0.99))
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


@given(st.floats(0.0, 64.0), st.floats(0.01, 1.0), st.floats(0.0, 4.0))
def test_the_budget_stays_between_its_floor_and_one_core(spare: float, floor: float, headroom: float) -> None:
    budget = shadow_budget(spare, floor, headroom)
    assert budget is not None and floor <= budget <= 1.0


@given(st.floats(0.0, 8.0), st.floats(0.0, 8.0), st.floats(0.01, 1.0), st.floats(0.0, 4.0))
def test_more_idle_cores_never_shrink_the_budget(a: float, b: float, floor: float, headroom: float) -> None:
    low, high = sorted((a, b))
    smaller, larger = shadow_budget(low, floor, headroom), shadow_budget(high, floor, headroom)
    assert smaller is not None and larger is not None and smaller <= larger


def test_busy_machine_gets_the_floor_and_a_quiet_one_a_core() -> None:
    assert shadow_budget(0.3, 0.25, 0.5) == 0.25
    assert shadow_budget(1.0, 0.25, 0.5) == 0.5
    assert shadow_budget(1.9, 0.25, 0.5) == 1.0


def test_no_floor_no_budget_and_no_headroom_or_measurement_the_floor() -> None:
    assert shadow_budget(2.0, None, 0.5) is None
    assert shadow_budget(2.0, 0.25, None) == 0.25
    assert shadow_budget(None, 0.25, 0.5) == 0.25


class _Machine:
    """Two cores' idle-seconds counter and a clock, moved by the test."""

    def __init__(self) -> None:
        self.now, self.idle = 0.0, 0.0

    def run(self, seconds: float, idle_cores: float) -> None:
        self.now += seconds
        self.idle += seconds * idle_cores


def test_spare_cores_are_idle_cores_plus_the_shadows_own_per_interval() -> None:
    machine = _Machine()
    meter = SpareCpuMeter(1.0, idle_seconds=lambda: machine.idle, clock=lambda: machine.now, cores=2)
    machine.run(0.5, idle_cores=1.0)
    assert meter.spare_cores() is None  # no whole interval yet
    machine.run(0.5, idle_cores=1.0)
    meter.add_own(0.4)  # the shadow ran 0.4 s of that second: idle without it
    assert meter.spare_cores() == pytest.approx(1.4)
    machine.run(0.3, idle_cores=0.0)
    assert meter.spare_cores() == pytest.approx(1.4)  # held until the next interval closes
    machine.run(0.7, idle_cores=0.0)
    assert meter.spare_cores() == pytest.approx(0.0)  # serving took both cores


def test_the_real_meter_reads_this_machine() -> None:
    meter = SpareCpuMeter(0.05)
    time.sleep(0.1)
    spare = meter.spare_cores()
    assert spare is not None and 0.0 <= spare <= (os.cpu_count() or 1)
