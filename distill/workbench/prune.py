"""Structured pruning of a classify student before its KD: attention heads and feed-forward channels,
ranked by importance and really cut out of the layers (`distill.classify.model.keep_units`), so the
ONNX export that follows is smaller and faster, not masked.

Importance is the first-order Taylor estimate of what removing a unit costs (Molchanov et al. 2017;
per head, Michel et al. 2019): |Σ gradient × activation| of the KD loss against the teacher's soft
labels, the sum over the unit's activations (a head's output dimensions, a channel) and the tokens of
one text, its absolute value summed over the texts of a calibration slice (the first few batches of
the training data). A unit whose output does not move the loss scores 0.

The ranking is global across layers after each layer's scores are scaled to unit L2 norm (as Michel
et al. do: raw gradients differ in scale from layer to layer); each layer keeps at least one head and
one channel, so no layer is cut in two.

    record = prune_student(student, tokenizer, texts, soft, labels, recipe)   # before `distil`

Pruning a copy of the teacher is the same call on a student of all its layers (`student_layers` 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.classify.model import EncoderClassifier, encoder_layers, keep_units, layer_widths
from distill.classify.tokenize import BatchTokenizer
from distill.losses import kd_loss
from distill.trainer import LossFn

if TYPE_CHECKING:
    from distill.classify.recipe import ClassifyRecipe

CALIBRATION_BATCHES = 8  # of the recipe's batch size: 256 texts at 32, a few seconds on 2 cores


@dataclass(frozen=True)
class Importance:
    """Per layer, one score per attention head (heads,) and per feed-forward channel (channels,)."""

    heads: list[torch.Tensor]
    channels: list[torch.Tensor]


@dataclass(frozen=True)
class PrunePlan:
    """Per layer, the indices of the heads and channels that stay, ascending."""

    heads: list[list[int]]
    channels: list[list[int]]


def importance(
    model: EncoderClassifier, tokenizer: BatchTokenizer, texts: list[str], loss: LossFn, batch_size: int
) -> Importance:
    """|Σ grad × activation| per head and channel, per text, summed over `texts` (in eval mode: no
    dropout). The activations are the inputs of each layer's attention output projection (the heads'
    outputs side by side) and of its feed-forward output projection (the channels after GELU); `loss`
    takes the logits and the batch's indices into `texts`."""
    layers = encoder_layers(model)
    captured: list[torch.Tensor] = []
    hooks = [
        linear.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        for layer in layers
        for linear in (layer.attention.output.dense, layer.output.dense)
    ]
    heads = [torch.zeros(h) for h, _ in layer_widths(model)]
    channels = [torch.zeros(c) for _, c in layer_widths(model)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            index = np.arange(start, min(start + batch_size, len(texts)))
            ids, mask = (torch.from_numpy(a) for a in tokenizer([texts[i] for i in index]))
            captured.clear()
            with torch.enable_grad():
                value = loss(model(ids, mask), index)
                grads = torch.autograd.grad(value, captured)  # in forward order: attention, FFN, per layer
            for i, layer in enumerate(layers):
                size = layer.attention.self.attention_head_size
                attention = captured[2 * i].detach() * grads[2 * i]  # (B, T, heads × size)
                per_head = attention.unflatten(-1, (-1, size)).sum((1, 3))  # (B, heads)
                heads[i] += per_head.abs().sum(0)
                ffn = captured[2 * i + 1].detach() * grads[2 * i + 1]  # (B, T, channels)
                channels[i] += ffn.sum(1).abs().sum(0)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return Importance(heads, channels)


def plan(scores: Importance, share: float) -> PrunePlan:
    """What stays when `share` of the heads and `share` of the channels go, least important first."""
    return PrunePlan(kept(scores.heads, share), kept(scores.channels, share))


def kept(scores: Sequence[torch.Tensor], share: float) -> list[list[int]]:
    """Per layer, the units that stay once round(`share` × all units) of the lowest-scoring go, ranked
    across layers on scores scaled to unit norm per layer, the last unit of a layer never going.

    >>> kept([torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0, 0.0])], 0.4)   # scaled: .6 .8 | 1 0 0
    [[0, 1], [0]]
    >>> kept([torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0, 0.0])], 0.6)   # 3 of 5: then the .6
    [[1], [0]]
    >>> kept([torch.tensor([1.0]), torch.tensor([2.0, 1.0])], 0.9)             # 3 of 3: one per layer stays
    [[0], [0]]
    """
    if not 0 <= share < 1:
        raise ValueError(f"prune share must be in [0, 1), got {share}")
    scaled = [s / s.norm().clamp_min(1e-12) for s in scores]
    ranked = sorted((float(v), layer, unit) for layer, s in enumerate(scaled) for unit, v in enumerate(s))
    to_remove = math.floor(share * len(ranked) + 0.5)
    left = [len(s) for s in scores]
    removed: set[tuple[int, int]] = set()
    for _, layer, unit in ranked:
        if len(removed) == to_remove:
            break
        if left[layer] > 1:
            removed.add((layer, unit))
            left[layer] -= 1
    return [[u for u in range(len(s)) if (layer, u) not in removed] for layer, s in enumerate(scores)]


def apply(model: EncoderClassifier, chosen: PrunePlan) -> None:
    """Cuts every layer of `model` down to what `chosen` keeps, in place."""
    for layer, heads, channels in zip(encoder_layers(model), chosen.heads, chosen.channels, strict=True):
        keep_units(layer, heads, channels)


def prune_student(
    model: EncoderClassifier,
    tokenizer: BatchTokenizer,
    texts: list[str],
    soft: torch.Tensor,
    labels: torch.Tensor,
    recipe: ClassifyRecipe,
) -> dict[str, Any] | None:
    """Prunes `model` in place by the recipe's `prune` share, ranked on the KD loss (the recipe's T and α
    against the teacher's logits `soft` (N, C) and `labels` (N,)) over the first
    `CALIBRATION_BATCHES` batches of `texts`; returns what the lineage records (None at share 0)."""
    if not recipe.prune:
        return None

    def loss(logits: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
        return kd_loss(logits, soft[batch], labels[batch], recipe.temperature, recipe.alpha)

    before = layer_widths(model), sum(p.numel() for p in model.parameters())
    calibration = texts[: CALIBRATION_BATCHES * recipe.batch_size]
    chosen = plan(importance(model, tokenizer, calibration, loss, recipe.batch_size), recipe.prune)
    apply(model, chosen)
    return {
        "share": recipe.prune,
        "importance": "|grad x activation| of the KD loss",
        "calibration_texts": len(calibration),
        "heads_kept": [len(h) for h in chosen.heads],
        "heads_total": [h for h, _ in before[0]],
        "channels_kept": [len(c) for c in chosen.channels],
        "channels_total": [c for _, c in before[0]],
        "params_before": before[1],
        "params_after": sum(p.numel() for p in model.parameters()),
    }
