"""Offline figures for a /classify model against labels and against its teacher (pure numpy)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_per_row(teacher_logits: np.ndarray, student_logits: np.ndarray) -> np.ndarray:
    """KL(teacher ‖ student) in nats for each row, on the full class distribution."""
    log_p = log_softmax(teacher_logits.astype(np.float64))  # (N, C)
    log_q = log_softmax(student_logits.astype(np.float64))  # (N, C)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)  # (N,)


def accuracy(logits: np.ndarray, labels: list[int] | np.ndarray) -> float:
    return float((logits.argmax(-1) == np.asarray(labels)).mean())


def compare_to_teacher(teacher_logits: np.ndarray, student_logits: np.ndarray) -> dict[str, float]:
    agree = teacher_logits.argmax(-1) == student_logits.argmax(-1)
    return {
        "agreement": float(agree.mean()),
        "disagreement": float(1.0 - agree.mean()),
        "mean_kl": float(kl_per_row(teacher_logits, student_logits).mean()),
    }
