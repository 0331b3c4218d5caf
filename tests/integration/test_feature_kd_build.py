"""Hidden-state and attention KD on the tiny teacher: a 1-layer student built narrower than it (so the
hidden term goes through a projection and the attention term compares head-averaged maps) trains a few
steps with all three terms, gets closer to the teacher, and exports the same ONNX graph as a logits-only
student of its shape — the projection stays behind."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from distill.classify.build import load_split
from distill.classify.export import export_onnx
from distill.classify.feature_kd import attention_loss, recording
from distill.classify.kd import distil
from distill.classify.model import EncoderClassifier, Features
from distill.classify.student_start import feature_teacher, student_init
from distill.classify.tokenize import BatchTokenizer
from distill.losses import kd_loss
from distill.registry import Registry
from tests.support import TEACHER, TINY_RECIPE

pytestmark = pytest.mark.slow

FEATURE_RECIPE = replace(
    TINY_RECIPE,
    student_layers=1,
    student_width=128,  # 4 heads against the teacher's 12, and 128 wide against its 384
    losses=("logits", "hidden", "attention"),
    batch_size=32,
    student_epochs=2,
    student_lr=1e-3,
    threads=1,
)


@torch.no_grad()
def distances(
    student: EncoderClassifier, teacher: Features, tokenizer: BatchTokenizer, texts: list[str]
) -> tuple[float, float]:
    """The logits KD term and the attention KL of `student` against the teacher's `features` on
    `texts` (eval mode)."""
    ids, mask = (torch.from_numpy(a) for a in tokenizer(texts))
    with recording(student):
        own = student.eval().features(ids, mask, attentions=True)
    logits = kd_loss(own.logits, teacher.logits, None, FEATURE_RECIPE.temperature, 1.0)
    return logits.item(), attention_loss(own.attentions, teacher.attentions, mask).item()


def graph_signature(path: Path) -> tuple[list[str], list[str], list[str], set[int]]:
    """Inputs, outputs, the sorted op types, and every weight dimension. (Not the weights by name:
    the exporter shares equal initializers, and an untrained model has many, e.g. LayerNorm's ones.)"""
    graph = onnx.load(str(path)).graph
    ops = sorted(node.op_type for node in graph.node if node.op_type != "Identity")  # shared weights
    dims = {d for w in graph.initializer for d in w.dims}
    return [i.name for i in graph.input], [o.name for o in graph.output], ops, dims


def test_a_narrow_student_learns_from_hidden_states_and_attention_and_exports_without_the_projection(
    state_dir: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    registry = Registry(state_dir)
    teacher = registry.get(TEACHER)
    train = load_split(FEATURE_RECIPE, teacher.labels).train
    part = train.take(list(range(64)))
    student, tokenizer = student_init(registry, teacher, FEATURE_RECIPE)
    logits_only = copy.deepcopy(student)  # the same student, as logits-only KD would start it
    teacher_model = feature_teacher(registry, teacher, tokenizer)
    ids, mask = (torch.from_numpy(a) for a in tokenizer(part.texts))
    with torch.no_grad(), recording(teacher_model):
        theirs = teacher_model.features(ids, mask, attentions=True)
    before = distances(student, theirs, tokenizer, part.texts)

    labels, soft = torch.tensor(part.labels), theirs.logits  # the teacher's logits, as the cache holds them
    distil(student, tokenizer, part.texts, soft, labels, FEATURE_RECIPE, "feature kd", False, teacher_model)

    after = distances(student, theirs, tokenizer, part.texts)
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    assert student.encoder.config._attn_implementation == "sdpa"  # what it serves and exports with
    export_onnx(student, tmp_path / "feature.onnx", tokenizer)
    export_onnx(logits_only, tmp_path / "logits.onnx", tokenizer)
    exported = graph_signature(tmp_path / "feature.onnx")
    assert exported[:3] == graph_signature(tmp_path / "logits.onnx")[:3]
    assert 384 not in exported[3]  # nothing of the teacher's width: the projection (384 × 128) stayed behind
    sizes = [(tmp_path / name).stat().st_size for name in ("feature.onnx", "logits.onnx")]
    assert abs(sizes[0] - sizes[1]) < 0.01 * sizes[1]
