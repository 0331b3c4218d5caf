"""Progressive KD's refusals: which model may stand between a teacher and its student, how deep a new
assistant may be, and the `kdgate distill --via` options that cannot work, each refused with exit 2 and
one line naming what is wrong, before any model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from distill.classify.assistant import via_layers_problem, via_problem
from distill.classify.recipe import ClassifyRecipe
from distill.registry import Manifest, Role
from distill.workbench.sweep import SweepSpec
from gateway.cli import app

LABELS = ["negative", "neutral", "positive"]


def manifest(name: str = "classify-student", **over: Any) -> Manifest:
    given: dict[str, Any] = {
        "name": name,
        "version": 1,
        "task": "classify",
        "role": Role.STUDENT,
        "format": "onnx",
        "labels": LABELS,
    }
    return Manifest.model_validate(given | over)


TEACHER = manifest("classify-teacher", role=Role.TEACHER, format="torch")


def test_a_classify_model_of_the_teachers_task_and_labels_may_be_the_assistant() -> None:
    assert via_problem(TEACHER, manifest()) is None
    assert via_problem(TEACHER, manifest("classify-teacher", version=2, role=Role.TEACHER)) is None


@pytest.mark.parametrize(
    ("assistant", "named"),
    [
        (TEACHER, "classify-teacher@1 is the teacher itself"),
        (manifest("generate-student", task="generate", labels=[]), "is a generate model, not a classify"),
        (manifest(kind="fault", format="fault"), "classify-student@1 is a fault wrapper"),
        (manifest("topics-student", task="topics", task_kind="classify"), "task 'topics', not of 'classify'"),
        (manifest(labels=["neg", "pos"]), "has labels ['neg', 'pos'], classify-teacher@1 has"),
    ],
)
def test_a_model_that_cannot_stand_in_for_the_teacher_is_refused_naming_why(
    assistant: Manifest, named: str
) -> None:
    assert named in (via_problem(TEACHER, assistant) or "")


def test_an_assistant_is_deeper_than_the_student_and_no_deeper_than_the_teacher() -> None:
    assert [n for n in range(8) if via_layers_problem(n, 2) is None] == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="logits only"):
        ClassifyRecipe(via="classify-student@1", losses=("logits", "hidden")).validated()


def test_a_sweep_keeps_its_id_while_via_is_unset_and_a_sweep_via_an_assistant_is_another() -> None:
    def sweep_id(recipe: ClassifyRecipe) -> str:
        return SweepSpec(task="classify", teacher="classify-teacher@1", recipe=recipe, points=()).id

    assert sweep_id(ClassifyRecipe()) == "classify-2f317d7b23"  # its id before the field existed
    assert sweep_id(ClassifyRecipe(via="classify-student@1")) != sweep_id(ClassifyRecipe())


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["--via", "2"], "an assistant of 2 layers must be deeper than the student (--layers 2)"),
        (["--via", "7", "--layers", "1"], "at most 6 deep"),
        (["--via", "3", "--recipe", '{"student_layers": 4}'], "deeper than the student (--layers 4)"),
        (["--via", "classify-student@1", "--from-shadow"], "keeps its parent's shape"),
        (["--via", "3", "--task", "generate"], "built for classify students"),
        (["--via", "4", "--recipe", '{"losses": ["logits", "hidden"]}'], "learns its logits only"),
    ],
)
def test_kdgate_distill_refuses_a_via_it_cannot_do_naming_why(
    tmp_path: Path, given: list[str], named: str
) -> None:
    result = CliRunner().invoke(app, ["distill", *given, "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Invalid value" in result.output
    assert named in " ".join(result.output.replace("│", " ").split())
    assert not any(tmp_path.iterdir())  # refused before a registry, let alone a teacher, was made
