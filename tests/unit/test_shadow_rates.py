"""Unit tests of gateway.shadow.rates: rate validation (pure) and the persisted overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from durablefs.shared import SharedDocument
from gateway.errors import InvalidInput
from gateway.settings import Settings
from gateway.shadow.rates import ShadowRates, validate_rates

STUDENT, STUDENT2, GEN = "classify-student@1", "classify-student@2", "generate-student@1"
STUDENTS_OF = {STUDENT: "classify", STUDENT2: "classify", GEN: "generate"}


def invalid(rates: dict[str, object], task: str = "classify") -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_rates(task, rates, STUDENTS_OF)
    assert info.value.status == 422
    return info.value


def test_rates_in_range_and_null_pass() -> None:
    assert validate_rates("classify", {STUDENT: 0, STUDENT2: None}, STUDENTS_OF) == {
        STUDENT: 0.0,
        STUDENT2: None,
    }
    assert validate_rates("classify", {STUDENT: 1}, STUDENTS_OF) == {STUDENT: 1.0}


@pytest.mark.parametrize(
    ("rates", "task", "field"),
    [
        ({}, "classify", "rates"),
        ({"classify-teacher@1": 0.5}, "classify", "rates.classify-teacher@1"),  # the teacher has no rate
        ({"nope@1": 0.5}, "classify", "rates.nope@1"),
        ({GEN: 0.5}, "classify", f"rates.{GEN}"),  # another task's student
        ({STUDENT: 1.5}, "classify", f"rates.{STUDENT}"),
        ({STUDENT: -0.1}, "classify", f"rates.{STUDENT}"),
        ({STUDENT: "0.5"}, "classify", f"rates.{STUDENT}"),
        ({STUDENT: True}, "classify", f"rates.{STUDENT}"),
        ({STUDENT: float("nan")}, "classify", f"rates.{STUDENT}"),
    ],
)
def test_bad_rates_name_the_field(rates: dict[str, object], task: str, field: str) -> None:
    assert invalid(rates, task).field == field


def test_an_override_wins_over_settings_and_null_drops_it(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, shadow_rate=0.5, shadow_rates={STUDENT2: 0.1})
    rates = ShadowRates(SharedDocument(tmp_path / "shadow_rates.json"), settings)
    assert (rates.rate(STUDENT), rates.rate(STUDENT2)) == (0.5, 0.1)
    rates.update({STUDENT: 0.0, STUDENT2: 1.0})
    assert (rates.rate(STUDENT), rates.rate(STUDENT2)) == (0.0, 1.0)
    assert rates.update({STUDENT2: None}) == {STUDENT: 0.0}
    assert rates.rate(STUDENT2) == 0.1  # back to its configured rate


def test_overrides_survive_a_new_store_and_the_file_is_whole_json(tmp_path: Path) -> None:
    path = tmp_path / "shadow_rates.json"
    ShadowRates(SharedDocument(path), Settings(state_dir=tmp_path)).update({STUDENT: 0.25})
    assert json.loads(path.read_text()) == {STUDENT: 0.25}
    assert not list(tmp_path.glob("*.tmp"))
    assert ShadowRates(SharedDocument(path), Settings(state_dir=tmp_path)).rate(STUDENT) == 0.25
