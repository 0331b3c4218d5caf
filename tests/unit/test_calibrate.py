"""Unit tests of distill.workbench.calibrate: ECE against a direct reading of its definition, and
temperature scaling on synthetic models whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distill.classify.evaluate import softmax
from distill.workbench.calibrate import expected_calibration_error, fit_temperature


def reference_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE read straight off its definition: for each bin (lo, hi], |acc − conf| weighted by its share."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if lo < c <= hi]
        if members:
            acc = np.mean([predicted[i] == labels[i] for i in members])
            conf = np.mean([confidence[i] for i in members])
            total += len(members) / len(labels) * abs(acc - conf)
    return total


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(2, 5)), elements=st.floats(-8, 8)),
    st.integers(0, 2**31 - 1),
    st.sampled_from([5, 10, 15]),
)
def test_ece_matches_its_definition(logits: np.ndarray, seed: int, bins: int) -> None:
    labels = np.random.default_rng(seed).integers(0, logits.shape[1], len(logits))
    probs = softmax(logits)
    expected = reference_ece(probs, labels, bins)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(expected)


def synthetic(n: int, classes: int, overconfidence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (so z is calibrated), and a model that outputs z × overconfidence."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(n, classes))
    probs = softmax(z)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return z * overconfidence, labels


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_ece() -> None:
    logits, labels = synthetic(n=4000, classes=3, overconfidence=3.0, seed=0)
    before = expected_calibration_error(softmax(logits), labels)
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error(softmax(logits / temperature), labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert before > 0.1 and after < 0.03


def test_an_underconfident_model_gets_a_temperature_below_one() -> None:
    logits, labels = synthetic(n=4000, classes=4, overconfidence=0.4, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(0.4, rel=0.15)


def test_no_examples_is_an_error_not_a_nan() -> None:
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
