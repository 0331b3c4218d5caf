"""A pruned student built for real on the tiny teacher: half its heads and feed-forward channels cut by
importance, KD to recover, the usual export (parity-checked against the pruned PyTorch model) and gate,
registered with the pruning in its lineage. Its ONNX graphs (fp32 and the served INT8) hold the pruned
layers' weights, not the teacher's shapes with a mask, and its saved PyTorch weights load back into the
same model (what a re-distillation warm-starts from)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from distill.classify.build import build_student, load_split
from distill.classify.export import onnx_logits, torch_logits
from distill.classify.io import load_classifier
from distill.classify.runner import load_runner
from distill.classify.student_export import ONNX_FP32
from distill.classify.tokenize import BatchTokenizer
from distill.gate import GateConfig
from distill.registry import Registry
from tests.support import TEACHER, TINY_RECIPE

pytestmark = pytest.mark.slow

PRUNED = replace(
    TINY_RECIPE, prune=0.5
)  # the teacher's first 2 layers, 12 heads of 32 and 1536 channels each
# The tiny student agrees with its tiny teacher on ~75% of texts: the gate's thresholds are for real ones.
LENIENT = GateConfig(min_agreement=0.3, max_kl=5.0, min_accuracy=0.2, max_ece_rise=None)
HIDDEN, HEAD_SIZE = 384, 32


def layer_weight_shapes(path: Path) -> Counter[tuple[int, ...]]:
    """The shapes of the graph's 2-D weights other than the embeddings' and the head's: the transformer
    layers' projections, as (in, out) MatMul operands."""
    graph = onnx.load(str(path)).graph
    outside = {(30522, HIDDEN), (512, HIDDEN), (2, HIDDEN), (3, HIDDEN), (HIDDEN, 3)}  # embeddings; the head
    return Counter(
        tuple(w.dims) for w in graph.initializer if len(w.dims) == 2 and tuple(w.dims) not in outside
    )


def expected_shapes(heads: list[int], channels: list[int]) -> Counter[tuple[int, ...]]:
    shapes: Counter[tuple[int, ...]] = Counter()
    for h, c in zip(heads, channels, strict=True):
        shapes.update([(HIDDEN, h * HEAD_SIZE)] * 3 + [(h * HEAD_SIZE, HIDDEN), (HIDDEN, c), (c, HIDDEN)])
    return shapes


def test_a_pruned_student_exports_smaller_holds_parity_passes_the_gate_and_registers(state_dir: Path) -> None:
    registry = Registry(state_dir)
    manifest = build_student(registry, PRUNED, TEACHER, log=lambda _: None, gate_config=LENIENT)
    assert manifest.ref == "classify-student@2" and manifest.metrics["gate"]["passed"]
    pruning = manifest.lineage.recipe["pruning"]
    assert manifest.lineage.recipe["prune"] == 0.5 and pruning["share"] == 0.5
    assert pruning["heads_total"] == [12, 12] and sum(pruning["heads_kept"]) == 12
    assert pruning["channels_total"] == [1536, 1536] and sum(pruning["channels_kept"]) == 1536
    assert min(pruning["heads_kept"]) >= 1 and pruning["params_after"] < pruning["params_before"]

    folder = registry.path(manifest.ref)
    expected = expected_shapes(pruning["heads_kept"], pruning["channels_kept"])
    assert layer_weight_shapes(folder / ONNX_FP32) == expected
    assert layer_weight_shapes(folder / manifest.files[0]) == expected  # the served file (INT8 if kept)
    unpruned = registry.path("classify-student@1") / ONNX_FP32
    assert layer_weight_shapes(unpruned) == expected_shapes([12, 12], [1536, 1536])  # what is compared
    removed_bytes = 4 * (pruning["params_before"] - pruning["params_after"])  # fp32 weights cut out
    assert (folder / ONNX_FP32).stat().st_size < unpruned.stat().st_size - 0.95 * removed_bytes

    # The recorded parity, and again here: the saved pruned weights against the exported graph.
    assert manifest.metrics["onnx_parity_argmax_agreement"] == 1.0
    assert manifest.metrics["onnx_parity_max_abs_diff"] < 1e-4
    model = load_classifier(folder)
    assert json.loads((folder / "config.json").read_text())["kdgate_layer_widths"] == [
        [h, c] for h, c in zip(pruning["heads_kept"], pruning["channels_kept"], strict=True)
    ]
    tokenizer = BatchTokenizer.from_dir(folder, manifest.max_length)
    texts = load_split(PRUNED).test.texts[:64]
    reference, exported = (
        torch_logits(model, tokenizer, texts),
        onnx_logits(folder / ONNX_FP32, tokenizer, texts),
    )
    assert np.allclose(reference, exported, atol=1e-4)
    assert (reference.argmax(-1) == exported.argmax(-1)).all()

    served = load_runner(registry, manifest.ref).predict_batch(texts[:4])  # what the gateway loads
    assert served.shape == (4, 3) and np.allclose(served.sum(-1), 1.0, atol=1e-5)
