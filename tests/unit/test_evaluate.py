"""Unit tests of distill.classify.evaluate (pure numpy: KL per row, accuracy, agreement with the teacher)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distill.classify.evaluate import accuracy, compare_to_teacher, kl_per_row, log_softmax

finite = st.floats(-50, 50, allow_nan=False, width=32)


@st.composite
def logit_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n, c = draw(st.integers(1, 16)), draw(st.integers(2, 6))
    teacher = draw(arrays(np.float32, (n, c), elements=finite))
    student = draw(arrays(np.float32, (n, c), elements=finite))
    return teacher, student


def test_log_softmax_is_normalised_and_stable_for_large_logits() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    out = log_softmax(logits)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(axis=-1), 1.0)
    np.testing.assert_allclose(out[0, :2], math.log(0.5))


def test_kl_per_row_matches_a_hand_computation() -> None:
    teacher = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    student = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    expected = []
    for t_row, s_row in zip(teacher, student, strict=True):
        p = np.exp(t_row) / np.exp(t_row).sum()
        q = np.exp(s_row) / np.exp(s_row).sum()
        expected.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    out = kl_per_row(teacher, student)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # Row 0 by formula: p = softmax(2, 1, 0), q its reverse, KL = (p0 − p2) · 2.
    p = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    assert out[0] == pytest.approx(2 * (p[0] - p[2]), rel=1e-12)


def test_kl_is_teacher_to_student() -> None:
    teacher = np.array([[3.0, 0.0, 0.0]])
    student = np.array([[1.0, 1.0, 0.0]])
    assert kl_per_row(teacher, student)[0] != pytest.approx(kl_per_row(student, teacher)[0])


@settings(max_examples=100, deadline=None)
@given(pair=logit_pairs())
def test_kl_per_row_is_non_negative(pair: tuple[np.ndarray, np.ndarray]) -> None:
    teacher, student = pair
    kl = kl_per_row(teacher, student)
    assert kl.shape == (teacher.shape[0],)
    assert np.isfinite(kl).all()
    assert (kl >= -1e-12).all()  # ≥ 0 up to float64 rounding


@settings(max_examples=50, deadline=None)
@given(pair=logit_pairs(), shift=st.floats(-100, 100))
def test_kl_per_row_is_zero_for_equal_logits_and_shift_invariant(
    pair: tuple[np.ndarray, np.ndarray], shift: float
) -> None:
    teacher, _ = pair
    np.testing.assert_array_equal(kl_per_row(teacher, teacher.copy()), 0.0)
    np.testing.assert_allclose(kl_per_row(teacher, teacher.astype(np.float64) + shift), 0.0, atol=1e-9)


def test_accuracy() -> None:
    logits = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert accuracy(logits, [0, 1, 1, 1]) == 0.75
    assert accuracy(logits, np.array([0, 1, 0, 1])) == 1.0


def test_compare_to_teacher_agreement() -> None:
    teacher = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    student = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 9.0], [1.0, 0.0, 0.0]])
    figures = compare_to_teacher(teacher, student)
    assert set(figures) == {"agreement", "disagreement", "mean_kl"}
    assert figures["agreement"] == 0.75  # row 1 disagrees (argmax 1 vs 2)
    assert figures["disagreement"] == 0.25
    assert figures["mean_kl"] == pytest.approx(float(kl_per_row(teacher, student).mean()))
    assert all(isinstance(v, float) for v in figures.values())


def test_compare_to_teacher_with_itself() -> None:
    teacher = np.random.default_rng(0).normal(size=(20, 4))
    assert compare_to_teacher(teacher, teacher) == {"agreement": 1.0, "disagreement": 0.0, "mean_kl": 0.0}


@settings(max_examples=50, deadline=None)
@given(pair=logit_pairs())
def test_agreement_and_disagreement_sum_to_one(pair: tuple[np.ndarray, np.ndarray]) -> None:
    figures = compare_to_teacher(*pair)
    assert 0.0 <= figures["agreement"] <= 1.0
    assert figures["agreement"] + figures["disagreement"] == pytest.approx(1.0)
    assert figures["mean_kl"] >= -1e-12
