"""Unit tests of gateway.serving.traffic: weight validation (pure) and the persisted TrafficStore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from durablefs.shared import SharedDocument
from gateway.errors import InvalidInput
from gateway.serving.traffic import TrafficStore, validate_weights

TEACHER, STUDENT, STUDENT2, GEN = "classify-teacher@1", "classify-student@1", "classify-student@2", "gen@1"
MODELS_OF = {TEACHER: "classify", STUDENT: "classify", STUDENT2: "classify", GEN: "generate"}


def invalid(weights: dict[str, object], task: str = "classify") -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_weights(task, weights, MODELS_OF)
    assert info.value.status == 422
    return info.value


# --- validate_weights -----------------------------------------------------------------------------------


def test_a_valid_split_comes_back_with_integer_weights() -> None:
    assert validate_weights("classify", {TEACHER: 75, STUDENT: 25}, MODELS_OF) == {TEACHER: 75, STUDENT: 25}


def test_integral_floats_are_accepted_as_ints() -> None:
    clean = validate_weights("classify", {TEACHER: 75.0, STUDENT: 25.0}, MODELS_OF)
    assert clean == {TEACHER: 75, STUDENT: 25}
    assert all(type(w) is int for w in clean.values())


def test_zero_weights_are_dropped_from_the_result() -> None:
    clean = validate_weights("classify", {TEACHER: 100, STUDENT: 0, STUDENT2: 0.0}, MODELS_OF)
    assert clean == {TEACHER: 100}


def test_unknown_model() -> None:
    error = invalid({TEACHER: 50, "nope@1": 50})
    assert error.field == "weights.nope@1"
    assert "unknown model" in error.message


def test_model_of_another_task() -> None:
    error = invalid({TEACHER: 50, GEN: 50})
    assert error.field == f"weights.{GEN}"
    assert "generate" in error.message


def test_unknown_task_matches_no_model() -> None:
    assert invalid({GEN: 100}, task="translate").field == f"weights.{GEN}"


@pytest.mark.parametrize("weight", [50.5, "50", None, [50], {"w": 50}, 1e-9])
def test_non_integer_weight(weight: object) -> None:
    error = invalid({TEACHER: 50, STUDENT: weight})
    assert error.field == f"weights.{STUDENT}"
    assert "integer" in error.message


@pytest.mark.parametrize("weight", [True, False])
def test_bool_weight_is_not_an_integer(weight: bool) -> None:
    # True == 1 in Python; a JSON `true` must still be refused rather than read as weight 1.
    error = invalid({TEACHER: 99, STUDENT: weight})
    assert error.field == f"weights.{STUDENT}"


def test_negative_weight() -> None:
    error = invalid({TEACHER: 110, STUDENT: -10})
    assert error.field == f"weights.{STUDENT}"
    assert "≥ 0" in error.message


@pytest.mark.parametrize("weights", [{TEACHER: 60, STUDENT: 30}, {TEACHER: 60, STUDENT: 50}, {TEACHER: 0}])
def test_not_summing_to_100(weights: dict[str, object]) -> None:
    error = invalid(weights)
    assert error.field == "weights"
    assert "sum to 100" in error.message


def test_empty() -> None:
    assert invalid({}).field == "weights"


def test_error_body_names_the_field() -> None:
    body = invalid({TEACHER: 50, "nope@1": 50}).body()
    assert body["error"] == {
        "type": "invalid_input",
        "message": body["error"]["message"],  # type: ignore[index]
        "field": "weights.nope@1",
    }


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_is_invalid_input(weight: float) -> None:
    assert invalid({TEACHER: weight}).field == f"weights.{TEACHER}"


# --- TrafficStore ---------------------------------------------------------------------------------------


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    store = TrafficStore(SharedDocument(tmp_path / "traffic.json"))
    assert store.all() == {}
    assert store.get("classify") == {}
    assert not (tmp_path / "traffic.json").exists()


def test_set_is_read_back_by_a_new_store_on_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    store = TrafficStore(SharedDocument(path))
    store.set("classify", {TEACHER: 75, STUDENT: 25})
    store.set("generate", {GEN: 100})
    assert TrafficStore(SharedDocument(path)).all() == {
        "classify": {TEACHER: 75, STUDENT: 25},
        "generate": {GEN: 100},
    }
    assert json.loads(path.read_text()) == store.all()


def test_set_replaces_the_file_atomically_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    store = TrafficStore(SharedDocument(path))
    store.set("classify", {TEACHER: 100})
    first_inode = path.stat().st_ino
    store.set("classify", {TEACHER: 90, STUDENT: 10})
    # A new inode: the file was renamed over, never rewritten in place (a reader sees old or new, whole).
    assert path.stat().st_ino != first_inode
    assert [p.name for p in tmp_path.iterdir()] == ["traffic.json"]
    assert not list(tmp_path.glob("*.tmp"))
    assert TrafficStore(SharedDocument(path)).get("classify") == {TEACHER: 90, STUDENT: 10}


def test_set_replaces_one_task_and_keeps_the_others(tmp_path: Path) -> None:
    store = TrafficStore(SharedDocument(tmp_path / "traffic.json"))
    store.set("classify", {TEACHER: 100})
    store.set("generate", {GEN: 100})
    store.set("classify", {STUDENT: 100})
    assert store.all() == {"classify": {STUDENT: 100}, "generate": {GEN: 100}}


def test_get_and_all_return_copies(tmp_path: Path) -> None:
    store = TrafficStore(SharedDocument(tmp_path / "traffic.json"))
    weights = {TEACHER: 100}
    store.set("classify", weights)
    weights[STUDENT] = 5  # the caller's dict is not the stored one
    store.get("classify")[STUDENT] = 5
    store.all()["classify"][STUDENT] = 5
    assert store.get("classify") == {TEACHER: 100}
