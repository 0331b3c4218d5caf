"""The classify student's KD training step, shared by a student build and a sweep's point: Hinton KD
on the teacher's cached logits, plus, as the recipe's `losses` say, hidden-state and attention KD
against the teacher run beside the student on every batch (`distill.classify.feature_kd`).

    summary = distil(student, tokenizer, texts, soft, labels, recipe, "distil", teacher=teacher_model)
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from distill.classify.feature_kd import FeatureDistiller, recording
from distill.classify.model import EncoderClassifier
from distill.classify.tokenize import BatchTokenizer
from distill.losses import kd_loss
from distill.trainer import LossFn, train

if TYPE_CHECKING:
    from distill.classify.recipe import ClassifyRecipe


def needs_teacher_model(recipe: ClassifyRecipe) -> bool:
    """Whether the recipe's losses match inner layers, so the teacher must run in PyTorch as it trains
    (logits KD alone reads the soft-label cache)."""
    return bool(set(recipe.losses) - {"logits"})


def distil(
    model: EncoderClassifier,
    tokenizer: BatchTokenizer,
    texts: list[str],
    soft: torch.Tensor,
    labels: torch.Tensor,
    recipe: ClassifyRecipe,
    desc: str,
    show_progress: bool = True,
    teacher: EncoderClassifier | None = None,
) -> dict[str, float]:
    """KD of `model` on `texts` against the teacher's logits `soft` (N, C) and `labels` (N,), as the
    recipe says; `teacher` (the teacher in PyTorch, on the student's tokens) is needed when its losses
    go beyond the logits. Trains `model` in place; a projection it needed is discarded after."""

    def logits_loss(logits: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
        return kd_loss(logits, soft[batch], labels[batch], recipe.temperature, recipe.alpha)

    def run(module: torch.nn.Module, loss: LossFn) -> dict[str, float]:
        return train(
            module,
            texts,
            tokenizer,
            loss,
            epochs=recipe.student_epochs,
            batch_size=recipe.batch_size,
            lr=recipe.student_lr,
            head_lr=recipe.student_head_lr,
            seed=recipe.seed,
            desc=desc,
            show_progress=show_progress,
        )

    if not needs_teacher_model(recipe):
        return run(model, logits_loss)
    if teacher is None:
        raise ValueError(f"losses {'+'.join(recipe.losses)} need the teacher's PyTorch model")
    distiller = FeatureDistiller(
        model,
        teacher,
        hidden_weight=recipe.hidden_weight if "hidden" in recipe.losses else 0.0,
        attention_weight=recipe.attention_weight if "attention" in recipe.losses else 0.0,
    )
    attentions = recording(model, teacher) if distiller.attention_weight else contextlib.nullcontext()
    with attentions:
        return run(distiller, lambda out, batch: logits_loss(out[0], batch) + out[1])
