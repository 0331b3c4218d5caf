"""Progressive KD on the tiny models: a student distilled via an assistant learns the assistant's soft
targets, is measured against the teacher, and names both in its lineage; `--via N` builds the assistant
first, as the task's next student, and reads as the chain teacher → assistant → student."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distill.classify.build import build_student, load_split, teacher_soft_labels
from distill.classify.evaluate import compare_to_teacher
from distill.classify.runner import load_runner
from distill.registry import Registry
from tests.support import STUDENT, TEACHER, TINY, TINY_RECIPE, kdgate_in_process

pytestmark = pytest.mark.slow

# Small enough for two student builds in seconds: 2 batches of KD each, and the figures on 50 texts.
FEW = TINY | {"student_examples": 64, "eval_examples": 50}
# Pure KD (alpha 1), so the student learns from the soft targets alone, and a head learning rate at which
# two batches move its answers.
VIA = replace(TINY_RECIPE, student_layers=1, alpha=1.0, via=STUDENT, student_head_lr=1e-2, **FEW)


def test_a_student_via_an_assistant_learns_its_targets_and_is_measured_against_the_teacher(
    state_dir: Path,
) -> None:
    registry = Registry(state_dir)
    teacher, assistant = registry.get(TEACHER), registry.get(STUDENT)
    split = load_split(VIA, teacher.labels)
    theirs = teacher_soft_labels(registry, teacher, split.test, log=lambda _: None)  # (T, C)
    rarest = int(np.bincount(theirs.argmax(-1), minlength=len(teacher.labels)).argmin())
    # The assistant's soft targets, cached as the build will read them, then all made the class the
    # teacher answers least: a student that learns them answers it almost always, one taught by the
    # teacher rarely.
    train_part = split.train.take(list(range(64)))
    teacher_soft_labels(registry, assistant, train_part, log=lambda _: None)
    [cached] = (state_dir / "cache" / "soft_labels" / STUDENT).glob("*.npy")
    targets = np.zeros_like(np.load(cached))  # (64, C)
    targets[:, rarest] = 10.0
    np.save(cached, targets)

    student = build_student(registry, VIA, TEACHER, log=lambda _: None)

    assert student.ref == "classify-student@2"
    assert (student.lineage.teacher, student.lineage.via, student.lineage.recipe["via"]) == (
        TEACHER,
        STUDENT,
        STUDENT,
    )
    own = load_runner(registry, student.ref).predict_logits(split.test.texts)  # what the gateway serves
    assert (own.argmax(-1) == rarest).mean() > 0.9  # the assistant's targets were learnt: --via was followed
    # Its figures are against the teacher.
    assert student.metrics["agreement"] == pytest.approx(
        compare_to_teacher(theirs, own)["agreement"], abs=0.01
    )
    assert student.metrics["teacher_test_accuracy"] == teacher.metrics["test_accuracy"]


def test_via_n_builds_the_assistant_then_the_student_and_the_manifests_read_as_a_chain(
    state_dir: Path,
) -> None:
    state = str(state_dir)
    done = kdgate_in_process(
        "distill", "--state-dir", state, "--layers", "1", "--via", "2", "--recipe", json.dumps(FEW)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout[done.stdout.index("{") :])["via"] == "classify-student@2"

    registry = Registry(state_dir)
    assistant, student = registry.get("classify-student@2"), registry.get("classify-student@3")
    assert assistant.lineage.teacher == TEACHER and assistant.lineage.via is None
    assert assistant.lineage.recipe["student_layers"] == 2 and "agreement" in assistant.metrics
    assert (student.lineage.teacher, student.lineage.via) == (TEACHER, assistant.ref)
    assert student.lineage.recipe["student_layers"] == 1 and student.lineage.recipe["via"] == assistant.ref
    shown = kdgate_in_process("models", "show", student.ref, "--state-dir", state)
    assert '"via": "classify-student@2"' in shown.stdout


@pytest.mark.parametrize(
    ("via", "named"),
    [
        ("classify-student@9", "classify-student@9 is not a registered model"),
        ("student", "student is not a registered model"),
        (TEACHER, "is the teacher itself"),
    ],
)
def test_a_via_ref_that_is_not_an_assistant_is_refused_before_any_training(
    state_dir: Path, via: str, named: str
) -> None:
    before = [m.ref for m in Registry(state_dir).list()]
    result = kdgate_in_process("distill", "--state-dir", str(state_dir), "--via", via)
    assert result.returncode == 2 and "--via" in result.stderr
    assert named in " ".join(result.stderr.replace("│", " ").split())
    assert [m.ref for m in Registry(state_dir).list()] == before
