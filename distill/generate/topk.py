"""Top-k soft targets of a causal LM and the KL on their support (pure tensor code, no I/O).

A teacher distribution over 49,152 tokens is stored as its k most likely ids, their log-probabilities
and the probability mass outside them (the "tail" bucket). The KL between teacher and student is taken
over k + 1 outcomes: the k ids and "anything else". Training (token-level KD) and shadow scoring use
the same function, so the live KL and the KL the student was trained to lower are the same quantity.

>>> teacher_logits = torch.tensor([[[4.0, 2.0, 1.0, 0.0, -1.0]]])      # (B, T, V) = (1, 1, 5)
>>> ids, logprobs, tail = topk_targets(teacher_logits, k=2)           # (B, T, k), (B, T, k), (B, T)
>>> ids.tolist()
[[[0, 1]]]
>>> kl = topk_kl(ids, logprobs, tail, teacher_logits)                 # (B, T) nats
>>> kl.tolist()                                                       # a student equal to the teacher
[[0.0]]
"""

from __future__ import annotations

import torch

TAIL_FLOOR = 1e-8  # keeps log(tail) finite when the top-k hold (numerically) all the mass


def topk_targets(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(…, V) logits → top-k ids (…, k) int64, their logprobs (…, k), tail mass (…,)."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)  # (…, V)
    top_logprobs, top_ids = logprobs.topk(k, dim=-1)  # (…, k)
    tail = (1.0 - top_logprobs.exp().sum(-1)).clamp_min(0.0)  # (…,)
    return top_ids, top_logprobs, tail


def topk_kl(
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher ‖ student) over the teacher's top-k ids plus the tail bucket, per position (…,).

    The student's tail is 1 − its mass on the teacher's top-k ids, so both sides are distributions over
    the same k + 1 outcomes and the KL is ≥ 0.
    """
    student_logprobs = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (…, V)
    student_top = student_logprobs.gather(-1, teacher_ids)  # (…, k)
    student_tail = (1.0 - student_top.exp().sum(-1)).clamp_min(TAIL_FLOOR)  # (…,)
    teacher_top_p = teacher_logprobs.float().exp()
    head = (teacher_top_p * (teacher_logprobs.float() - student_top)).sum(-1)  # (…,)
    tail_p = teacher_tail.float()
    tail = tail_p * (tail_p.clamp_min(TAIL_FLOOR).log() - student_tail.log())
    return (head + tail).clamp_min(0.0)
