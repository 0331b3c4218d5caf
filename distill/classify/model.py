"""The /classify model: a BERT-style encoder (MiniLM), mean pooling and a linear head.

The teacher is the whole 6-layer all-MiniLM-L6-v2 fine-tuned end to end; a student is the same
module cut to its first few layers. This file does no I/O (see `distill.classify.io`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.pytorch_utils import prune_linear_layer


class EncoderClassifier(nn.Module):
    """Encoder → masked mean pool → dropout → linear head, returning logits (B, C)."""

    def __init__(self, config: BertConfig, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, H)
        return self._classify(hidden, attention_mask)

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, attentions: bool = False
    ) -> Features:
        """The logits with what feature KD matches: the hidden states (embeddings, then each layer's
        output) and, with `attentions`, each layer's attention probabilities. The attention
        implementation must return them (the default, SDPA, does not: see `feature_kd.recording`)."""
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            output_attentions=attentions,
        )
        logits = self._classify(out.last_hidden_state, attention_mask)
        return Features(logits, tuple(out.hidden_states), tuple(out.attentions) if attentions else ())

    def _classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        return self.head(self.dropout(pooled))  # (B, C)


class Features(NamedTuple):
    logits: torch.Tensor  # (B, C)
    hidden_states: tuple[torch.Tensor, ...]  # L + 1 of (B, T, H): the embeddings, then each layer
    attentions: tuple[torch.Tensor, ...]  # L of (B, heads, T, T), each row a distribution; () if not asked


def truncated_copy(model: EncoderClassifier, num_layers: int) -> EncoderClassifier:
    """A student initialised from `model`: its embeddings, its first `num_layers` layers and its head.

    Starting from the (fine-tuned) teacher's own lower layers is what makes a 2-layer student agree
    with it after one epoch; from random init it would need far more data than we ship.
    """
    config = copy.deepcopy(model.encoder.config)
    if not 1 <= num_layers <= config.num_hidden_layers:
        raise ValueError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
    config.num_hidden_layers = num_layers
    student = EncoderClassifier(config, model.head.out_features, dropout=model.dropout.p)
    state = {k: v for k, v in model.state_dict().items() if not _layer_index_at_least(k, num_layers)}
    student.load_state_dict(state)
    return student


def _layer_index_at_least(key: str, num_layers: int) -> bool:
    prefix = "encoder.encoder.layer."
    if not key.startswith(prefix):
        return False
    return int(key[len(prefix) :].split(".", 1)[0]) >= num_layers


def narrowed_copy(model: EncoderClassifier, num_layers: int, width: int, seed: int = 0) -> EncoderClassifier:
    """A student built rather than cut: `num_layers` fresh layers of hidden size `width` (heads of 32,
    feed-forward 4 × width), its embeddings and head those of `model` projected onto the `width`
    principal directions of `model`'s word embeddings.

    Its transformer layers start from scratch — there are no teacher weights of that shape to copy —
    but the projection keeps the most of what the embeddings tell apart (the head sees the same
    subspace), so training starts from a classifier of pooled embeddings rather than from noise.
    """
    config = copy.deepcopy(model.encoder.config)
    if width % 32 or not 32 <= width <= config.hidden_size:
        raise ValueError(f"width must be a multiple of 32 in 32..{config.hidden_size}, got {width}")
    config.num_hidden_layers = num_layers
    config.hidden_size, config.num_attention_heads, config.intermediate_size = width, width // 32, 4 * width
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        student = EncoderClassifier(config, model.head.out_features, dropout=model.dropout.p)
    source = model.encoder.embeddings
    with torch.no_grad():
        words = source.word_embeddings.weight  # (V, H)
        _, _, vh = torch.linalg.svd(words - words.mean(0), full_matrices=False)  # vh: (H, H)
        basis = vh[:width].T  # (H, W): the top principal directions
        target = student.encoder.embeddings
        target.word_embeddings.weight.copy_(words @ basis)
        target.position_embeddings.weight.copy_(source.position_embeddings.weight @ basis)
        target.token_type_embeddings.weight.copy_(source.token_type_embeddings.weight @ basis)
        student.head.weight.copy_(model.head.weight @ basis)  # (C, W)
        student.head.bias.copy_(model.head.bias)
    return student


def encoder_layers(model: EncoderClassifier) -> list[Any]:
    """The transformer layers of `model` (transformers' `BertLayer`s, typed Any: their submodules are
    reached by attribute, which nn.Module types as `Tensor | Module`)."""
    return list(model.encoder.encoder.layer)


def _index(units: Sequence[int]) -> torch.LongTensor:
    return cast(torch.LongTensor, torch.tensor(list(units), dtype=torch.long))


def keep_units(layer: Any, heads: Sequence[int], channels: Sequence[int]) -> None:
    """Cuts `layer` down to the attention `heads` and feed-forward `channels` listed (indices into what
    it holds now), in place: the query/key/value rows and the attention output's columns of the other
    heads go, as do the intermediate rows and output columns of the other channels. The Linear layers
    are really smaller (an export is too), not masked. The attention reshapes to (…, -1, head size), so
    it runs with however many heads are left."""
    attention = layer.attention.self
    size = attention.attention_head_size
    rows = _index([h * size + i for h in heads for i in range(size)])
    attention.query = prune_linear_layer(attention.query, rows)
    attention.key = prune_linear_layer(attention.key, rows)
    attention.value = prune_linear_layer(attention.value, rows)
    layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
    attention.num_attention_heads, attention.all_head_size = len(heads), len(heads) * size
    kept = _index(channels)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, kept)
    layer.output.dense = prune_linear_layer(layer.output.dense, kept, dim=1)


def layer_widths(model: EncoderClassifier) -> list[tuple[int, int]]:
    """(attention heads, feed-forward channels) of each layer as its modules hold them: the config's for
    every layer, unless the model was pruned."""
    return [
        (
            layer.attention.self.query.out_features // layer.attention.self.attention_head_size,
            layer.intermediate.dense.out_features,
        )
        for layer in encoder_layers(model)
    ]


def with_layer_widths(model: EncoderClassifier, widths: Sequence[tuple[int, int]]) -> EncoderClassifier:
    """`model` (freshly built from its config) with each layer cut to the (heads, channels) of `widths`:
    the shape a pruned model's saved weights load into."""
    for layer, (heads, channels) in zip(encoder_layers(model), widths, strict=True):
        keep_units(layer, range(heads), range(channels))
    return model
