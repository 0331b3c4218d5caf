"""Hidden-state and attention KD: loss terms that match a student's inner layers to its teacher's, on
top of the logits KD of `distill.losses.kd_loss` (pure tensor code, plus the module that trains them).

- **hidden** (TinyBERT, Jiao et al. 2020): MSE between the student's hidden states and the teacher's
  at mapped layers, the embeddings' output with the embeddings' output. A student narrower than its
  teacher goes through a learned linear projection onto the teacher's width; the projection trains
  with the student and is thrown away after (it is not part of the exported classifier).
- **attention** (MiniLM, Wang et al. 2020): KL(teacher ‖ student) between the attention
  distributions of mapped layers, per head and query token. With a different number of heads, the
  head-averaged distributions are compared instead (the mean of distributions is a distribution).

The layer map is uniform: student layer i (from 0) learns from teacher layer round((i + 1)·Lt/Ls) − 1,
so the student's last layer always learns from the teacher's last.

>>> layer_map(2, 6), layer_map(3, 6), layer_map(6, 6)
([2, 5], [1, 3, 5], [0, 1, 2, 3, 4, 5])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from distill.classify.model import EncoderClassifier

KD_ATTENTION = "kdgate_kd_eager"  # the attention implementation a student trains with under attention KD
_EPS = 1e-12  # floor of a probability under a log: masked keys have probability 0 on both sides


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer (from 0) each student layer learns from: round((i + 1)·Lt/Ls) − 1, halves up."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student of {student_layers} layers for a teacher of {teacher_layers}")
    return [math.floor((i + 1) * teacher_layers / student_layers + 0.5) - 1 for i in range(student_layers)]


def hidden_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    mask: torch.Tensor,
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Mean over mapped pairs (embeddings first) of the MSE per real token and teacher dimension.

    `student` holds Ls + 1 states (B, T, Hs), `teacher` Lt + 1 states (B, T, Ht), `mask` (B, T) is 1 on
    real tokens; `projection` maps Hs onto Ht (required when they differ)."""
    pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map(len(student) - 1, len(teacher) - 1))]
    keep = mask.to(student[0].dtype).unsqueeze(-1)  # (B, T, 1)
    terms = []
    for s, t in pairs:
        mapped = student[s] if projection is None else projection(student[s])  # (B, T, Ht)
        if mapped.shape != teacher[t].shape:
            raise ValueError(f"student states {tuple(mapped.shape)} vs teacher's {tuple(teacher[t].shape)}")
        squared = (mapped - teacher[t]).pow(2) * keep  # (B, T, Ht)
        terms.append(squared.sum() / (keep.sum() * teacher[t].shape[-1]))
    return torch.stack(terms).mean()


def attention_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Mean over mapped layers of KL(teacher ‖ student), summed over keys and averaged over heads and
    real query tokens. `student` holds Ls attention maps (B, hs, T, T), `teacher` Lt (B, ht, T, T);
    when hs ≠ ht both are averaged over their heads first (one head-averaged distribution per query)."""
    keep = mask.to(student[0].dtype)[:, None, :]  # (B, 1, T): real query tokens
    terms = []
    for s, t in enumerate(layer_map(len(student), len(teacher))):
        p_s, p_t = student[s], teacher[t]  # (B, hs, T, T), (B, ht, T, T)
        if p_s.shape[1] != p_t.shape[1]:
            p_s, p_t = p_s.mean(1, keepdim=True), p_t.mean(1, keepdim=True)  # (B, 1, T, T)
        log_ratio = p_t.clamp_min(_EPS).log() - p_s.clamp_min(_EPS).log()
        kl = (p_t * log_ratio).sum(-1)  # (B, h, T): one KL per head and query
        terms.append((kl * keep).sum() / (keep.sum() * kl.shape[1]))
    return torch.stack(terms).mean()


class FeatureDistiller(nn.Module):
    """The student as it trains under feature KD: its forward returns its logits and the weighted
    hidden/attention terms against the teacher on the same batch. The teacher runs in eval mode without
    gradients and is not a submodule (not trained, not checkpointed); `projection` is (when the widths
    differ), so it trains and checkpoints with the student — export `distiller.student` alone.

        distiller = FeatureDistiller(student, teacher, hidden_weight=1.0, attention_weight=0.0)
        logits, extra = distiller(ids, mask)           # (B, C), a scalar
    """

    def __init__(
        self,
        student: EncoderClassifier,
        teacher: EncoderClassifier,
        hidden_weight: float,
        attention_weight: float,
    ) -> None:
        super().__init__()
        self.student = student
        self._teacher = (teacher.eval(),)  # a tuple hides it from nn.Module's registration
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        widths = student.encoder.config.hidden_size, teacher.encoder.config.hidden_size
        self.projection = nn.Linear(*widths) if widths[0] != widths[1] and hidden_weight else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # logits (B, C), the weighted feature terms ()
        attentions = self.attention_weight > 0
        own = self.student.features(input_ids, attention_mask, attentions)
        with torch.no_grad():
            theirs = self._teacher[0].features(input_ids, attention_mask, attentions)
        extra = own.logits.new_zeros(())
        if self.hidden_weight:
            hidden = hidden_loss(own.hidden_states, theirs.hidden_states, attention_mask, self.projection)
            extra = extra + self.hidden_weight * hidden
        if attentions:
            extra = extra + self.attention_weight * attention_loss(
                own.attentions, theirs.attentions, attention_mask
            )
        return own.logits, extra


@contextmanager
def recording(*models: EncoderClassifier) -> Iterator[None]:
    """Runs `models` with an attention implementation that returns its probabilities, restoring theirs
    after (SDPA, the default and the one exported, returns none; eager returns them after dropout)."""
    saved = [model.encoder.config._attn_implementation for model in models]
    for model in models:
        model.encoder.set_attn_implementation(KD_ATTENTION)
    try:
        yield
    finally:
        for model, implementation in zip(models, saved, strict=True):
            model.encoder.set_attn_implementation(implementation)


def _kd_eager_attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, h, T, d)
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # (B, 1, T, T) additive: 0 or the dtype's min
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that returns the probabilities *before* dropout: the distribution attention KD
    compares, where eager's would have dropped entries and rows summing to 1/(1 − p)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)  # (B, h, T, T)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    dropped = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(dropped, value).transpose(1, 2).contiguous(), probs  # (B, T, h, d), (B, h, T, T)


AttentionInterface.register(KD_ATTENTION, _kd_eager_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(KD_ATTENTION, eager_mask)  # an additive float mask, as eager's
