"""A student built at a smaller width (`narrowed_copy`): fresh layers, the teacher's embeddings and head
projected onto the top principal directions of its word embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from distill.classify.model import EncoderClassifier, narrowed_copy

HIDDEN = 64


def small_teacher() -> EncoderClassifier:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    return EncoderClassifier(config, num_labels=3)


def test_at_full_width_the_projection_is_a_rotation_that_loses_nothing() -> None:
    teacher = small_teacher()
    student = narrowed_copy(teacher, 1, HIDDEN)
    words = teacher.encoder.embeddings.word_embeddings.weight  # (V, H)
    projected = student.encoder.embeddings.word_embeddings.weight  # (V, H) in the rotated basis
    # Rotations keep every inner product: the student's words are the teacher's, seen in another basis.
    torch.testing.assert_close(projected @ projected.T, words @ words.T, atol=1e-4, rtol=1e-4)
    # ...and the head sees them in the same basis: head(rotated x) == teacher head(x).
    torch.testing.assert_close(student.head(projected), teacher.head(words), atol=1e-4, rtol=1e-4)


def test_a_narrow_student_keeps_the_widest_directions_and_runs() -> None:
    teacher = small_teacher()
    student = narrowed_copy(teacher, 1, 32, seed=1)
    assert student.encoder.config.hidden_size == 32 and student.encoder.config.num_attention_heads == 1
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2
    words = teacher.encoder.embeddings.word_embeddings.weight
    centred = words - words.mean(0)
    kept = (
        student.encoder.embeddings.word_embeddings.weight
        - words.mean(0) @ torch.linalg.svd(centred, full_matrices=False)[2][:32].T
    )
    # The kept variance is the top half of the spectrum: more than any other 32 directions keep,
    # e.g. more than the first 32 coordinates of the teacher's own basis.
    assert kept.pow(2).sum() > centred[:, :32].pow(2).sum()
    logits = student(torch.tensor([[1, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long))
    assert logits.shape == (1, 3)
    torch.testing.assert_close(narrowed_copy(teacher, 1, 32, seed=1).state_dict(), student.state_dict())


def test_a_width_that_is_not_a_multiple_of_the_head_size_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        narrowed_copy(small_teacher(), 1, 48)
