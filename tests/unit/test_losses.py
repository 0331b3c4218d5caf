"""Unit tests of distill.losses.kd_loss against hand computations in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import kd_loss

B, C = 8, 5


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_soft(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    log_p = np_log_softmax(teacher / temperature)  # (B, C)
    log_q = np_log_softmax(student / temperature)  # (B, C)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)  # (B,)
    return float(temperature**2 * kl.mean())


def np_cross_entropy(student: np.ndarray, labels: np.ndarray) -> float:
    return float(-np_log_softmax(student)[np.arange(len(labels)), labels].mean())


def logits(seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    student = rng.normal(0, scale, (B, C))
    teacher = rng.normal(0, scale, (B, C))
    labels = rng.integers(0, C, B)
    return student, teacher, labels


def kd(
    student: np.ndarray,
    teacher: np.ndarray,
    labels: np.ndarray | None,
    temperature: float,
    alpha: float,
) -> float:
    y = None if labels is None else torch.from_numpy(labels)
    out = kd_loss(torch.from_numpy(student), torch.from_numpy(teacher), y, temperature, alpha)
    assert out.ndim == 0
    return float(out)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_soft_term_is_t_squared_kl_computed_by_hand(seed: int, temperature: float) -> None:
    student, teacher, labels = logits(seed)
    expected = np_soft(student, teacher, temperature)
    assert kd(student, teacher, labels, temperature, alpha=1.0) == pytest.approx(expected, rel=1e-9)
    assert kd(student, teacher, None, temperature, alpha=1.0) == pytest.approx(expected, rel=1e-9)


def test_soft_term_is_teacher_to_student_kl_not_the_reverse() -> None:
    student, teacher, _ = logits(11)
    forward = np_soft(student, teacher, 1.0)
    reverse = np_soft(teacher, student, 1.0)
    assert abs(forward - reverse) > 1e-3  # the case tells the two directions apart
    assert kd(student, teacher, None, 1.0, 1.0) == pytest.approx(forward, rel=1e-9)


def test_temperature_squared_scaling() -> None:
    # Logits ×4 at T=4 give the same distributions as the originals at T=1: only the T² factor differs.
    student, teacher, _ = logits(3)
    at_1 = kd(student, teacher, None, temperature=1.0, alpha=1.0)
    at_4 = kd(4 * student, 4 * teacher, None, temperature=4.0, alpha=1.0)
    assert at_1 == pytest.approx(np_soft(student, teacher, 1.0), rel=1e-9)
    assert at_4 == pytest.approx(16 * at_1, rel=1e-9)


def test_t_squared_keeps_the_gradient_magnitude_independent_of_t() -> None:
    # Hinton et al.: for large T and zero-mean logits, d(T²·KL)/ds ≈ (s − t) / (C · B) whatever T.
    student, teacher, _ = logits(5, scale=1.0)
    student -= student.mean(axis=-1, keepdims=True)
    teacher -= teacher.mean(axis=-1, keepdims=True)
    expected = (student - teacher) / (C * B)  # (B, C)
    norms = []
    for temperature in (50.0, 100.0):
        s = torch.from_numpy(student).requires_grad_()
        kd_loss(s, torch.from_numpy(teacher), None, temperature, alpha=1.0).backward()
        assert s.grad is not None
        # The approximation error is O(1/T) of the largest entries: compare at the scale of the gradient.
        np.testing.assert_allclose(s.grad.numpy(), expected, rtol=0, atol=0.02 * np.abs(expected).max())
        norms.append(float(s.grad.norm()))
    assert norms[0] == pytest.approx(norms[1], rel=0.02)


@pytest.mark.parametrize("seed", range(3))
def test_alpha_one_is_the_pure_soft_term(seed: int) -> None:
    student, teacher, labels = logits(seed)
    assert kd(student, teacher, labels, 2.0, alpha=1.0) == pytest.approx(np_soft(student, teacher, 2.0))


@pytest.mark.parametrize("seed", range(3))
def test_alpha_zero_is_pure_cross_entropy_at_temperature_one(seed: int) -> None:
    student, teacher, labels = logits(seed)
    expected = np_cross_entropy(student, labels)  # the hard term ignores T
    assert kd(student, teacher, labels, 2.0, alpha=0.0) == pytest.approx(expected, rel=1e-9)
    assert kd(student, teacher, labels, 7.0, alpha=0.0) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5, 0.9])
def test_alpha_mixes_linearly(alpha: float) -> None:
    student, teacher, labels = logits(4)
    soft = kd(student, teacher, labels, 3.0, alpha=1.0)
    hard = kd(student, teacher, labels, 3.0, alpha=0.0)
    mixed = kd(student, teacher, labels, 3.0, alpha=alpha)
    assert mixed == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-9)
    assert mixed == pytest.approx(
        alpha * np_soft(student, teacher, 3.0) + (1 - alpha) * np_cross_entropy(student, labels), rel=1e-9
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_without_labels_the_loss_is_the_soft_term_alone(alpha: float) -> None:
    student, teacher, _ = logits(6)
    assert kd(student, teacher, None, 2.0, alpha) == pytest.approx(np_soft(student, teacher, 2.0), rel=1e-9)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_identical_logits_give_a_zero_soft_term(temperature: float) -> None:
    student, _, _ = logits(7)
    assert kd(student, student.copy(), None, temperature, 1.0) == pytest.approx(0.0, abs=1e-12)
    # Shifting every logit of a row by a constant changes nothing either (softmax is shift-invariant).
    shifted = student + np.arange(B)[:, None] * 10.0
    assert kd(student, shifted, None, temperature, 1.0) == pytest.approx(0.0, abs=1e-9)


def test_float32_inputs_work_and_gradients_flow() -> None:
    student, teacher, labels = logits(8)
    s = torch.from_numpy(student.astype(np.float32)).requires_grad_()
    loss = kd_loss(s, torch.from_numpy(teacher.astype(np.float32)), torch.from_numpy(labels), 2.0, 0.5)
    loss.backward()
    assert loss.dtype == torch.float32
    assert s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize(("temperature", "alpha"), [(0.0, 0.5), (-1.0, 0.5), (1.0, -0.1), (1.0, 1.1)])
def test_invalid_temperature_or_alpha_raises(temperature: float, alpha: float) -> None:
    student, teacher, labels = logits(9)
    with pytest.raises(ValueError, match=r"temperature|alpha"):
        kd(student, teacher, labels, temperature, alpha)


def test_nan_alpha_raises() -> None:
    student, teacher, labels = logits(9)
    with pytest.raises(ValueError, match="alpha"):
        kd(student, teacher, labels, 1.0, float("nan"))


@pytest.mark.parametrize("temperature", [float("nan"), float("inf")])
def test_non_finite_temperature_raises(temperature: float) -> None:
    student, teacher, labels = logits(9)
    with pytest.raises(ValueError, match="temperature"):
        kd(student, teacher, labels, temperature, 0.5)
