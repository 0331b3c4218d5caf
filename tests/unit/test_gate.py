"""Unit tests of distill.gate's calibration check (the other checks are exercised through both tasks'
re-distillation tests)."""

from __future__ import annotations

from dataclasses import replace

from distill.gate import Figures, GateConfig, gate

GOOD = Figures(0.93, 0.04, 0.76, calibrated_ece=0.03, teacher_calibrated_ece=0.02)


def test_an_overconfident_student_is_refused_by_its_calibrated_ece() -> None:
    overconfident = replace(GOOD, calibrated_ece=0.09)
    result = gate(overconfident, None, GateConfig())
    assert not result.passed
    assert result.reasons == ["calibrated ECE 0.0900 exceeds the teacher's 0.0200 by more than 0.02"]


def test_a_student_as_calibrated_as_its_teacher_passes_and_the_check_can_be_turned_off() -> None:
    assert gate(GOOD, None, GateConfig()).passed
    assert gate(replace(GOOD, calibrated_ece=0.5), None, GateConfig(max_ece_rise=None)).passed


def test_without_figures_the_check_does_not_apply() -> None:
    """/generate candidates and uncalibrated models carry no ECE."""
    assert gate(replace(GOOD, calibrated_ece=None), None, GateConfig()).passed
    assert gate(replace(GOOD, teacher_calibrated_ece=None), None, GateConfig()).passed
