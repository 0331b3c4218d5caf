"""Re-distillation from a real shadow log: the teacher's logits on shifted-domain text (BBC news sent to
a tweet classifier), written by the real shadow writer; the candidate is gated against its parent."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distill.classify.redistill import RedistillRecipe, redistill
from distill.classify.runner import load_runner
from distill.corpora import bbc_paragraphs
from distill.gate import GateConfig
from distill.registry import Registry
from distill.shadowlog.writer import ShadowLogWriter
from tests.support import kill_at_first_checkpoint

TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"
# The tiny test models are weak: absolute minimums are off, the comparisons with the parent are on.
LOOSE = GateConfig(
    min_agreement=0.0,
    max_kl=10.0,
    min_accuracy=0.0,
    max_agreement_drop=0.0,
    max_kl_rise=0.05,
    max_accuracy_drop=0.05,
)


@pytest.fixture(scope="module")
def bbc_logits(built_state: Path) -> tuple[list[str], np.ndarray]:
    """BBC paragraphs and the session teacher's logits on them, scored once for the module's tests."""
    texts = bbc_paragraphs(limit=400, seed=1)
    return texts, load_runner(Registry(built_state), TEACHER).predict_logits(texts)


def write_shadow(state_dir: Path, texts: list[str], teacher_logits: np.ndarray, start: float) -> str:
    root = str(state_dir / "shadow")
    with ShadowLogWriter(root, "classify", flush_rows=100) as writer:
        for i, (text, logits) in enumerate(zip(texts, teacher_logits, strict=True)):
            writer.append(
                {
                    "request_id": f"r{i}",
                    "ts": start + i * 0.01,
                    "served_model": TEACHER,
                    "teacher_model": TEACHER,
                    "input_text": text,
                    "served_label": "neutral",
                    "served_probs": [1 / 3] * 3,
                    "teacher_logits": logits.tolist(),
                    "latency_ms": 5.0,
                }
            )
    return root


@pytest.fixture
def shifted(state_dir: Path, bbc_logits: tuple[list[str], np.ndarray]) -> tuple[Path, str, float]:
    start = time.time() - 60
    return state_dir, write_shadow(state_dir, *bbc_logits, start), start


def test_redistilled_student_agrees_more_on_the_new_domain_and_is_registered(shifted) -> None:
    state_dir, root, start = shifted
    registry = Registry(state_dir)
    # About agreement on the new domain: calibrated ECE on ~60 held-out tweets moves by more than the
    # gate's 0.02 from one tiny student to the next (the calibration gate is tested on its own).
    gate = replace(LOOSE, max_ece_rise=None)
    result = redistill(
        registry, RedistillRecipe(since=start - 1, gate=gate, epochs=2, threads=2), root, log=lambda _: None
    )
    assert result.gate.passed, result.gate.reasons
    assert result.gate.candidate is not None and result.gate.parent is not None
    assert result.gate.candidate.recent_agreement >= result.gate.parent.recent_agreement
    manifest = registry.get("classify-student@2")
    assert manifest.lineage.parent == STUDENT and manifest.lineage.teacher == TEACHER
    window = manifest.lineage.data["window"]
    unique = len(set(bbc_paragraphs(limit=400, seed=1)))  # the window is deduplicated by text
    assert window["counts"]["shadow_window"] + window["counts"]["holdout"] == unique
    assert window["counts"]["seed"] > 0
    assert manifest.metrics["gate"]["passed"] is True
    assert load_runner(registry, manifest.ref).predict_batch(["markets fell sharply"]).shape == (1, 3)


def test_candidate_trained_on_corrupted_targets_is_refused(shifted) -> None:
    state_dir, root, start = shifted
    registry = Registry(state_dir)
    # A third of the steps of a real run: rotated targets pull the student off its parent at once.
    recipe = RedistillRecipe(
        since=start - 1, gate=LOOSE, corrupt_targets=True, epochs=1, min_steps=20, threads=2
    )
    result = redistill(registry, recipe, root, log=lambda _: None)
    assert not result.gate.passed
    assert any("worse than the parent" in r or "dropped below" in r for r in result.gate.reasons)
    assert [m.ref for m in registry.list() if m.role == "student"] == [STUDENT]  # nothing registered
    runs = [json.loads(line) for line in (state_dir / "distill" / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["registered"] is None and runs[-1]["gate"]["reasons"] == result.gate.reasons


def test_a_killed_run_resumes_on_the_same_window_and_ends_with_the_same_student(shifted) -> None:
    """kill -9 mid-training, rerun with the same recipe and no `until`: the run resumes from its last
    checkpoint on the window pinned before the kill, and its student equals an uninterrupted run's.
    One epoch (about 15 steps) per run: the test is about resuming, not about what more steps teach."""
    state_dir, root, start = shifted
    reference_dir = state_dir.parent / "reference"
    shutil.copytree(state_dir, reference_dir, copy_function=os.link)
    steps = "epochs=1, min_steps=8, checkpoint_every=2, threads=2"
    recipe = f"RedistillRecipe(since={start - 1!r}, gate={LOOSE!r}, {steps})"
    script = (
        "from pathlib import Path\n"
        "from distill.classify.redistill import RedistillRecipe, redistill\n"
        "from distill.gate import GateConfig\n"
        "from distill.registry import Registry\n"
        f"redistill(Registry(Path({str(state_dir)!r})), {recipe}, {root!r})\n"
    )
    until = kill_at_first_checkpoint(script, state_dir)

    resumed = redistill(
        Registry(state_dir),
        RedistillRecipe(since=start - 1, gate=LOOSE, epochs=1, min_steps=8, checkpoint_every=2, threads=2),
        root,
        log=lambda _: None,
    )
    reference = redistill(
        Registry(reference_dir),
        RedistillRecipe(since=start - 1, until=until, gate=LOOSE, epochs=1, min_steps=8, threads=2),
        str(reference_dir / "shadow"),
        log=lambda _: None,
    )
    assert resumed.data["until"] == reference.data["until"] == until
    assert resumed.data["counts"] == reference.data["counts"]
    assert resumed.training["resumed_from_step"] >= 2  # it did resume (checkpoint_every=2)
    assert reference.training["resumed_from_step"] == 0
    assert resumed.gate.candidate == reference.gate.candidate  # identical figures: identical student
    assert json.loads((state_dir / "distill" / "inflight.json").read_text()) == {}
    assert not any((state_dir / "distill" / "checkpoints").glob("*.pt"))
