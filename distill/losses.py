"""Knowledge-distillation losses (pure tensor code)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): alpha · T² · KL(p_T ‖ q_T) + (1 − alpha) · CE(q, y).

    p_T, q_T are the teacher's and student's softmax at temperature T. The T² factor keeps the soft
    term's gradient magnitude independent of T, so alpha means the same thing at any temperature.
    Without labels (e.g. shadow-log text) the loss is the soft term alone.

    >>> t = torch.tensor([[2.0, 0.0, -1.0]])                # (B, C) teacher logits
    >>> y = torch.tensor([0])                               # (B,) int64 labels
    >>> float(kd_loss(t.clone(), t, y, temperature=2.0, alpha=1.0))  # the student matches the teacher
    0.0
    >>> float(kd_loss(-t, t, y, temperature=2.0, alpha=0.9)) > 0
    True
    """
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, C)
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2
    if labels is None:
        return soft
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard
