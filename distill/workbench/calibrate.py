"""Calibration of a classifier's probabilities: expected calibration error and post-hoc temperature
scaling (Guo et al., 2017), pure numpy/scipy on logits and labels.

A distilled student trained on softened targets is often over- or under-confident even when its argmax
agrees with the teacher. Dividing its logits by one temperature fitted on held-out data fixes the
confidence without moving any argmax, so agreement and accuracy are unchanged.

>>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
>>> labels = np.array([0, 1, 1, 0])           # right 3 times in 4, but ~98% sure every time
>>> round(expected_calibration_error(softmax(logits), labels), 3)
0.232
>>> t = fit_temperature(logits, labels)
>>> t > 1.0                                   # over-confident: the fitted temperature softens it
True
>>> expected_calibration_error(softmax(logits / t), labels) < 0.05
True
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from distill.classify.evaluate import log_softmax, softmax
from distill.registry import Calibration

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)  # wide enough for any sane model; bounded so the search always ends


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the bin-weighted mean |accuracy − confidence| over equal-width confidence bins."""
    if len(labels) == 0:
        raise ValueError("ECE needs at least one example")
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(float)
    # bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur (≥ 1/C)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    log_probs = log_softmax(logits.astype(np.float64) / temperature)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises held-out NLL (searched on log T, where NLL is smooth)."""
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled example")
    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(low, high), method="bounded"
    )
    return float(np.exp(result.x))


def calibration_of(
    val_logits: np.ndarray, val_labels: list[int], test_logits: np.ndarray, test_labels: list[int]
) -> Calibration:
    """Fits the temperature on the validation split and reports ECE on the test split before and after."""
    temperature = fit_temperature(val_logits, np.asarray(val_labels))
    labels = np.asarray(test_labels)
    return Calibration(
        temperature=round(temperature, 4),
        ece=expected_calibration_error(softmax(test_logits), labels),
        calibrated_ece=expected_calibration_error(softmax(test_logits / temperature), labels),
        bins=ECE_BINS,
    )
