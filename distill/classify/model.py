"""The /classify model: a BERT-style encoder (MiniLM), mean pooling and a linear head.

The teacher is the whole 6-layer all-MiniLM-L6-v2 fine-tuned end to end; a student is the same
module cut to its first few layers. This file does no I/O (see `distill.classify.io`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import BertConfig, BertModel


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
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        return self.head(self.dropout(pooled))  # (B, C)


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
