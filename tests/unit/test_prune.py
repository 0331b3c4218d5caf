"""Structured pruning (`distill.workbench.prune`) on a toy encoder: the importance of a head or channel is
|Σ grad × activation| (checked against the derivative of the loss by a gate on each unit, worked out
by autograd independently, and against units made silent by hand), the ranking keeps the most
important, and a pruned model computes exactly what the unpruned one computes with those units gated
off — also after a save and a load. The sweep and the CLI take the share as an axis and an option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from transformers import BertConfig
from typer.testing import CliRunner

from distill.classify.io import base_tokenizer, load_classifier, save_classifier
from distill.classify.model import EncoderClassifier, layer_widths
from distill.classify.recipe import ClassifyRecipe
from distill.classify.tokenize import BatchTokenizer
from distill.workbench.grid import GridError, grid
from distill.workbench.prune import PrunePlan, apply, importance, kept, plan
from gateway.cli import app
from gateway.cli.sweep import _grid

HEADS, SIZE, CHANNELS = 3, 4, 6
TEXTS = ["the cat sat", "a longer text about the cat and the mat", "dogs", "what a day it was", "ok then"]
SOFT = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.5, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0]])


def toy(layers: int = 1) -> EncoderClassifier:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,  # the packaged tokenizer's ids
        hidden_size=HEADS * SIZE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=CHANNELS,
    )
    return EncoderClassifier(config, num_labels=3).eval()


def tokenizer() -> BatchTokenizer:
    return BatchTokenizer(base_tokenizer(), 16)


def kd(logits: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
    """A KD loss against the soft labels above (batch mean, as kd_loss is)."""
    return torch.nn.functional.kl_div(logits.log_softmax(-1), SOFT[batch].softmax(-1), reduction="batchmean")


def gated(model: EncoderClassifier, heads: torch.Tensor, channels: torch.Tensor) -> torch.nn.Module:
    """`model` with each head's output scaled by heads[b, h] and each channel's by channels[b, c] (b the
    text): the loss's derivative in a gate at 1 is the unit's Σ grad × activation for that text."""
    layer = model.encoder.encoder.layer[0]

    def scale_heads(_module: torch.nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        x = args[0].unflatten(-1, (HEADS, SIZE))  # (B, T, heads, size)
        return ((x * heads[:, None, :, None]).flatten(-2),)

    def scale_channels(_module: torch.nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        return (args[0] * channels[:, None, :],)

    layer.attention.output.dense.register_forward_pre_hook(scale_heads)
    layer.output.dense.register_forward_pre_hook(scale_channels)
    return model


def test_importance_is_the_abs_derivative_of_the_loss_in_each_units_gate_summed_over_texts() -> None:
    head_gates = torch.ones(len(TEXTS), HEADS, requires_grad=True)
    channel_gates = torch.ones(len(TEXTS), CHANNELS, requires_grad=True)
    ids, mask = (torch.from_numpy(a) for a in tokenizer()(TEXTS))
    kd(gated(toy(), head_gates, channel_gates)(ids, mask), np.arange(len(TEXTS))).backward()
    assert head_gates.grad is not None and channel_gates.grad is not None

    scores = importance(toy(), tokenizer(), TEXTS, kd, batch_size=2)  # batches of 2, 2, 1: sums add up

    # A batch mean scales each text's term by 1/B: the derivative over all 5 texts at once is the
    # batch-of-2 one times 2/5 (texts 0-3) or 1/5 (text 4).
    per_batch = torch.tensor([5 / 2, 5 / 2, 5 / 2, 5 / 2, 5.0])[:, None]
    assert torch.allclose(scores.heads[0], (head_gates.grad * per_batch).abs().sum(0), rtol=1e-4)
    assert torch.allclose(scores.channels[0], (channel_gates.grad * per_batch).abs().sum(0), rtol=1e-4)


def test_a_silent_unit_scores_zero_and_the_loudest_head_is_the_one_kept() -> None:
    model = toy()
    layer = model.encoder.encoder.layer[0]
    with torch.no_grad():  # head 1 reads nothing (values 0), channel 4 outputs GELU(0) = 0
        layer.attention.self.value.weight[SIZE : 2 * SIZE] = 0
        layer.attention.self.value.bias[SIZE : 2 * SIZE] = 0
        layer.intermediate.dense.weight[4] = 0
        layer.intermediate.dense.bias[4] = 0
    scores = importance(model, tokenizer(), TEXTS, kd, batch_size=8)
    assert scores.heads[0][1] == 0 and scores.channels[0][4] == 0
    assert scores.heads[0][0] > 0 and scores.heads[0][2] > 0

    assert plan(scores, 1 / 3).heads == [[0, 2]]  # one of three heads goes: the silent one
    loudest = int(scores.heads[0].argmax())
    assert plan(scores, 0.9).heads == [[loudest]]  # all but one go: the loudest stays
    assert 4 not in plan(scores, 0.5).channels[0] and len(plan(scores, 0.5).channels[0]) == 3


def test_the_ranking_is_global_across_layers_and_never_empties_a_layer() -> None:
    # Raw, layer 1's units are the least important; scaled per layer (.11 .22 .97 | .58 ×3), layer 0's two.
    scores = [torch.tensor([1.0, 2.0, 9.0]), torch.tensor([0.5, 0.5, 0.5])]
    assert kept(scores, 2 / 6) == [[2], [0, 1, 2]]
    assert kept(scores, 0.5) == [[2], [1, 2]]  # then layer 0's last unit stays: a unit of layer 1 goes
    assert kept([torch.zeros(2), torch.tensor([1.0, 2.0])], 0.75) == [[1], [1]]  # 3 of 4 asked, 2 can go
    with pytest.raises(ValueError, match="prune share"):
        kept(scores, 1.0)


def test_a_pruned_model_computes_the_gated_model_and_survives_a_save_and_load(tmp_path: Path) -> None:
    model, reference = toy(layers=2), toy(layers=2)
    chosen = PrunePlan(heads=[[0, 2], [1]], channels=[[1, 3, 5], [0, 1, 2, 3, 4]])
    apply(model, chosen)
    assert layer_widths(model) == [(2, 3), (1, 5)]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in reference.parameters())

    for i, layer in enumerate(reference.encoder.encoder.layer):  # the same units switched off instead
        heads = torch.tensor([float(h in chosen.heads[i]) for h in range(HEADS)]).repeat_interleave(SIZE)
        channels = torch.tensor([float(c in chosen.channels[i]) for c in range(CHANNELS)])
        layer.attention.output.dense.register_forward_pre_hook(lambda _m, a, g=heads: (a[0] * g,))
        layer.output.dense.register_forward_pre_hook(lambda _m, a, g=channels: (a[0] * g,))
    ids, mask = (torch.from_numpy(a) for a in tokenizer()(TEXTS))
    with torch.no_grad():
        expected, logits = reference(ids, mask), model(ids, mask)
    assert torch.allclose(logits, expected, atol=1e-5)

    save_classifier(model, tmp_path, tokenizer())
    loaded = load_classifier(tmp_path)
    assert layer_widths(loaded) == [(2, 3), (1, 5)]
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask), logits, atol=1e-6)


def test_the_share_is_a_recipe_field_a_sweep_axis_and_refused_out_of_range() -> None:
    assert ClassifyRecipe(prune=0.3).validated().prune == 0.3
    with pytest.raises(ValueError, match="prune"):
        ClassifyRecipe(prune=1.0).validated()
    assert [p.id for p in grid((2,), (0.9,), (2,), prunes=(0, 0.3))] == ["T2-a0.9-L2", "T2-a0.9-L2-p0.3"]
    assert [p.id for p in grid((2,), (0.9,), (2,))] == ["T2-a0.9-L2"]  # the default grid: unpruned only
    with pytest.raises(GridError, match="--prune"):
        grid((2,), (0.9,), (2,), prunes=(0.5, 1.0))
    assert [p.prune for p in _grid("2", "0.9", "1", None, None, "0,0.5")] == [0.0, 0.5]
    with pytest.raises(typer.Exit) as refused:
        _grid("2", "0.9", "1", None, None, "0,1.2")
    assert refused.value.exit_code == 2


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["--prune", "1.0"], "a share in [0, 1), got 1.0"),
        (["--prune", "0.3", "--from-shadow"], "keeps its parent's shape"),
        (["--prune", "0.3", "--task", "generate"], "built for classify students"),
    ],
)
def test_kdgate_distill_refuses_a_prune_it_cannot_do_naming_the_option(
    tmp_path: Path, given: list[str], named: str
) -> None:
    result = CliRunner().invoke(app, ["distill", *given, "--state-dir", str(tmp_path)])
    assert (
        result.exit_code == 2
        and "--prune" in result.output
        and named in " ".join(result.output.replace("│", " ").split())
    )
