"""The shadow's CPU budget: how long it pauses after a batch, how big it is for how busy serving is."""

from __future__ import annotations

import inspect
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.serving.inflight import InFlight
from gateway.shadow.budget import pause_for_budget, shadow_budget
from gateway.shadow.teacher_process import cpu_timed


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(st.floats(0.0, 10.0, allow_subnormal=False), st.floats(0.01, 0.99))
def test_busy_plus_pause_averages_the_budget(cpu: float, budget: float) -> None:
    pause = pause_for_budget(cpu, budget)
    assert pause >= 0.0
    if cpu > 0.0:
        assert cpu / (cpu + pause) == pytest.approx(budget)


@pytest.mark.parametrize("budget", [None, 1.0, 2.0])
def test_no_budget_or_a_whole_core_never_pauses(budget: float | None) -> None:
    assert pause_for_budget(0.5, budget) == 0.0


def test_cpu_time_counts_what_the_cpu_clock_advanced_during_the_call() -> None:
    cpu = _Clock()

    def compute_then_wait(texts: list[str]) -> np.ndarray:
        cpu.now += 0.05  # computing advances the CPU clock; a wait after it would not
        return np.zeros((len(texts), 3))

    cpu.now = 7.0
    logits, spent = cpu_timed(compute_then_wait, ["a", "b"], cpu_clock=cpu)
    assert logits.shape == (2, 3)
    assert spent == pytest.approx(0.05)


def test_the_default_cpu_clock_is_the_process_cpu_time_not_the_wall_clock() -> None:
    # Every thread of the worker process (the tokenizer's pool too) counts; sleeping does not.
    assert inspect.signature(cpu_timed).parameters["cpu_clock"].default is time.process_time


@given(st.floats(0.0, 1.0), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_the_budget_stays_between_its_floor_and_the_idle_budget(
    busy: float, floor: float, idle: float
) -> None:
    budget = shadow_budget(busy, floor, idle)
    assert budget is not None and floor <= budget <= max(floor, idle) <= 1.0


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_busier_serving_never_grows_the_budget(a: float, b: float, floor: float, idle: float) -> None:
    calmer, busier = sorted((a, b))
    more, less = shadow_budget(calmer, floor, idle), shadow_budget(busier, floor, idle)
    assert more is not None and less is not None and less <= more


def test_idle_serving_gets_the_idle_budget_and_busy_serving_the_floor() -> None:
    assert shadow_budget(0.0, 0.25, 1.0) == 1.0
    assert shadow_budget(0.5, 0.25, 1.0) == 0.625
    assert shadow_budget(1.0, 0.25, 1.0) == 0.25


def test_no_floor_no_budget_and_no_idle_budget_or_measurement_the_floor() -> None:
    assert shadow_budget(0.0, None, 1.0) is None
    assert shadow_budget(0.0, 0.25, None) == 0.25
    assert shadow_budget(None, 0.25, 1.0) == 0.25


def test_busy_share_counts_time_with_any_request_in_flight_once() -> None:
    clock = _Clock()
    load = InFlight(1.0, clock)
    load.enter()
    clock.now = 0.2
    load.enter()  # overlapping requests: still one busy period
    clock.now = 0.3
    load.leave()
    assert load.busy_share() is None  # no whole interval yet
    clock.now = 0.4
    load.leave()
    clock.now = 1.0
    assert load.busy_share() == pytest.approx(0.4)
    assert load.count == 0


def test_a_busy_period_across_intervals_is_split_between_them() -> None:
    clock = _Clock()
    load = InFlight(1.0, clock)
    clock.now = 0.5
    load.enter()
    clock.now = 1.0
    assert load.busy_share() == pytest.approx(0.5)
    clock.now = 1.5
    assert load.busy_share() == pytest.approx(0.5)  # held until the next interval closes
    clock.now = 1.8
    load.leave()
    clock.now = 2.0
    assert load.busy_share() == pytest.approx(0.8)
