"""The default build's plan: teachers first, the generate teacher before all; a task's role that has a
model (built before, or imported) is not built again; a failed step is recorded and the rest go on."""

from __future__ import annotations

import time
from pathlib import Path

from distill.build_status import StepState, StepStatus, read_status
from distill.classify.recipe import ClassifyRecipe
from distill.default_models import BuildStep, build_missing, default_steps, missing
from distill.generate.recipe import GenerateRecipe
from distill.progress import ProgressBar
from distill.registry import Manifest, Registry, Role


def order(steps: list[BuildStep]) -> list[tuple[str, str]]:
    return [(s.task, str(s.role)) for s in steps]


def test_teachers_come_first_and_the_generate_teacher_before_all() -> None:
    steps = default_steps(ClassifyRecipe(), GenerateRecipe())
    assert order(steps) == [
        ("generate", "teacher"),
        ("classify", "teacher"),
        ("classify", "student"),
        ("generate", "student"),
    ]
    assert order(default_steps(ClassifyRecipe(), None)) == [("classify", "teacher"), ("classify", "student")]


def register(registry: Registry, task: str, role: Role, name: str) -> None:
    with registry.stage(name) as staging:
        (staging.path / "model.onnx").write_bytes(b"")
        manifest = Manifest(name=name, version=1, task=task, role=role, format="onnx", files=["model.onnx"])
        staging.commit(manifest)


def test_a_role_that_has_a_model_is_not_built_again(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    register(registry, "classify", Role.TEACHER, "my-teacher")  # e.g. imported
    steps = default_steps(ClassifyRecipe(), GenerateRecipe())
    assert order(missing(registry, steps)) == [
        ("generate", "teacher"),
        ("classify", "student"),
        ("generate", "student"),
    ]


def test_a_failed_step_is_recorded_and_the_next_still_run(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    ran: list[str] = []

    def fails(registry: Registry, log: object) -> None:
        raise RuntimeError("no data")

    def builds(registry: Registry, log: object) -> None:
        ran.append("student")
        register(registry, "classify", Role.STUDENT, "s")

    steps = [BuildStep("classify", Role.TEACHER, fails), BuildStep("classify", Role.STUDENT, builds)]
    status_file = tmp_path / "build" / "status.json"
    assert build_missing(registry, steps, status_file, log=lambda _: None) is False
    status = read_status(tmp_path)
    assert [s.state for s in status.steps] == [StepState.FAILED, StepState.DONE]
    assert status.steps[0].error == "RuntimeError: no data"
    assert status.steps[1].ref == "s@1" and ran == ["student"]
    assert not status.running


def test_a_building_step_shows_its_phase_progress_and_eta(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    seen: list[StepStatus] = []

    def trains(registry: Registry, log: object) -> None:
        with ProgressBar(total=40, desc="fine-tune", disable=True) as bar:
            time.sleep(0.05)
            bar.update(10)
            seen.append(read_status(tmp_path).steps[0])  # what an operator reads meanwhile
        register(registry, "classify", Role.TEACHER, "t")

    steps = [BuildStep("classify", Role.TEACHER, trains)]
    assert build_missing(registry, steps, tmp_path / "build" / "status.json", log=lambda _: None)
    during, after = seen[0], read_status(tmp_path).steps[0]
    assert during.state is StepState.BUILDING
    assert (during.phase, during.phase_done, during.phase_total) == ("fine-tune", 10, 40)
    assert during.eta_seconds is not None and during.eta_seconds > 0  # the arithmetic: Progress doctests
    assert after.state is StepState.DONE and after.eta_seconds is None
