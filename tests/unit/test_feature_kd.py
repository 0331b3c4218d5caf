"""Hidden-state and attention KD (`distill.classify.feature_kd`): the loss terms against values worked
out by hand on toy tensors, the uniform layer map, the projection of a narrow student, and the KD step
with every extra weight at 0 being exactly logits-only KD."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers import BertConfig

from distill.classify.feature_kd import (
    FeatureDistiller,
    attention_loss,
    hidden_loss,
    layer_map,
    recording,
)
from distill.classify.io import base_tokenizer
from distill.classify.kd import distil
from distill.classify.model import EncoderClassifier, narrowed_copy, truncated_copy
from distill.classify.recipe import ClassifyRecipe
from distill.classify.tokenize import BatchTokenizer

IDS = torch.tensor([[1, 5, 7, 2], [1, 5, 0, 0]])  # (B, T): the second text is padded
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def small_teacher(vocab: int = 100, layers: int = 4) -> EncoderClassifier:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2)
    config.intermediate_size = 128
    return EncoderClassifier(config, num_labels=3).eval()


def test_the_uniform_layer_map_ends_on_the_teachers_last_layer() -> None:
    assert layer_map(2, 6) == [2, 5]  # round(3) - 1, round(6) - 1
    assert layer_map(3, 6) == [1, 3, 5]
    assert layer_map(1, 6) == [5]
    assert layer_map(4, 6) == [1, 2, 4, 5]  # 1.5, 3, 4.5, 6: halves round up
    with pytest.raises(ValueError):
        layer_map(7, 6)


def test_hidden_loss_is_the_masked_mse_of_mapped_pairs_worked_by_hand() -> None:
    # Student: 1 layer (embeddings, layer 0); teacher: 2 layers, so student layer 0 ↔ teacher layer 1.
    # One text of 2 tokens, the second padding; width 2.
    s_emb = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])  # (B, T, H)
    s_l0 = torch.tensor([[[3.0, 0.0], [9.0, 9.0]]])
    t_emb = torch.tensor([[[0.0, 2.0], [-5.0, 5.0]]])
    t_l0 = torch.tensor([[[100.0, 100.0], [100.0, 100.0]]])  # not mapped: must not count
    t_l1 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    # embeddings: token 0 differs by (1, 0) → 1² + 0² = 1 over 1 token × 2 dims = 0.5
    # layer 0 ↔ teacher layer 1: (3 − 1, 0 − 1) → 4 + 1 = 5 over 2 = 2.5; the mean of the pairs: 1.5
    loss = hidden_loss([s_emb, s_l0], [t_emb, t_l0, t_l1], mask)
    assert loss.item() == pytest.approx(1.5)


def test_attention_loss_is_the_kl_of_mapped_distributions_worked_by_hand() -> None:
    # Student: 1 layer, 1 head; teacher: 2 layers, 1 head. Two tokens, both real.
    student = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])  # (B, h, T, T)
    unmapped = torch.tensor([[[[0.01, 0.99], [0.99, 0.01]]]])
    teacher = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    loss = attention_loss([student], [unmapped, teacher], torch.tensor([[1, 1]]))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # A padded query row does not count, and a padded key (probability 0 on both sides) adds nothing.
    padded_s = torch.tensor([[[[1.0, 0.0], [0.3, 0.7]]]])
    padded_t = torch.tensor([[[[1.0, 0.0], [0.9, 0.1]]]])
    loss = attention_loss([padded_s], [padded_t], torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-9)


def test_with_other_head_counts_the_head_averaged_distributions_are_compared() -> None:
    student = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])  # 1 head
    teacher = torch.tensor([[[[1.0, 0.0], [0.8, 0.2]], [[0.0, 1.0], [1.0, 0.0]]]])  # 2 heads
    # head-averaged teacher: rows (0.5, 0.5) and (0.9, 0.1), the previous test's
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    loss = attention_loss([student], [teacher], torch.tensor([[1, 1]]))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_a_narrow_student_matches_through_a_projection_that_trains_and_is_not_its_own() -> None:
    teacher = small_teacher()
    student = narrowed_copy(teacher, 2, 32)
    distiller = FeatureDistiller(student, teacher, hidden_weight=1.0, attention_weight=1.0).train()
    assert distiller.projection is not None and distiller.projection.weight.shape == (64, 32)
    with recording(student, teacher):
        logits, extra = distiller(IDS, MASK)
    extra.backward()
    assert logits.shape == (2, 3) and extra.item() > 0
    assert distiller.projection.weight.grad is not None and distiller.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())  # the teacher does not train
    assert not any("projection" in k for k in student.state_dict())  # what export sees
    assert not any(k.startswith("_teacher") for k in distiller.state_dict())
    # Back to SDPA, what serving and the export use.
    assert student.encoder.config._attn_implementation == "sdpa"
    assert FeatureDistiller(truncated_copy(teacher, 2), teacher, 1.0, 0.0).projection is None


def test_recorded_attentions_are_distributions_even_under_dropout() -> None:
    teacher = small_teacher()
    student = truncated_copy(teacher, 1).train()  # attention dropout 0.1 is on
    with recording(student):
        attentions = student.features(IDS, MASK, attentions=True).attentions
    (probs,) = attentions  # (B, h, T, T)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 4))
    assert probs[1, :, :, 2:].abs().max() == 0  # padded keys get nothing


def test_with_every_extra_weight_zero_the_kd_step_is_logits_only_kd() -> None:
    tokenizer = BatchTokenizer(base_tokenizer(), 8)
    teacher = small_teacher(vocab=base_tokenizer().get_vocab_size(), layers=2)
    texts = [f"text number {i} is {'good' if i % 2 else 'bad'}" for i in range(16)]
    soft, labels = torch.randn(16, 3), torch.arange(16) % 3
    base = ClassifyRecipe(batch_size=8, student_lr=1e-3, student_head_lr=1e-3)
    zeroed = replace(base, losses=("logits", "hidden", "attention"), hidden_weight=0.0, attention_weight=0.0)
    runs = []
    for recipe in (base, zeroed):
        student = truncated_copy(teacher, 1)
        student.encoder.embeddings.requires_grad_(False)  # 30k × 64 of them: a dense gradient is slow
        summary = distil(student, tokenizer, texts, soft, labels, recipe, "t", False, teacher)
        runs.append((summary["final_loss"], student.state_dict()))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)


def test_the_recipe_refuses_loss_sets_without_logits_or_with_unknown_terms() -> None:
    with pytest.raises(ValueError, match="losses"):
        ClassifyRecipe(losses=("hidden",)).validated()
    with pytest.raises(ValueError, match="losses"):
        ClassifyRecipe(losses=("logits", "hiden")).validated()
