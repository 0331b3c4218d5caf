"""The default models of a fresh state, built one at a time in the order that answers soonest, each
step's state and progress recorded in the build's status file (`distill/build_status.py`).

The order: the generate teacher (a conversion of the packaged GGUF file, seconds), the classify teacher
(a fine-tune, minutes), then the students (distillation from those teachers). A gateway serves each task
as soon as its teacher exists and picks up the students as they are registered (each behind its gate).
A step whose task already has a model in its role (built before, or imported) is skipped.

    steps = default_steps(ClassifyRecipe(), GenerateRecipe())
    build_missing(registry, steps, status_path(state_dir))

Which models are the defaults, and in which order, is apart from how each is built
(`default_models`): a gateway checks what is missing without importing the training code.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from distill.build_status import BuildStatus, StepState, StepStatus, phase_recorder
from distill.progress import listening
from distill.registry import Registry, Role
from durablefs import write_json

if TYPE_CHECKING:
    from distill.classify.recipe import ClassifyRecipe
    from distill.generate.recipe import GenerateRecipe

Log = Callable[[str], None]


@dataclass(frozen=True)
class DefaultModel:
    task: str
    role: Role

    @property
    def label(self) -> str:
        return f"{self.task} {self.role}"


@dataclass(frozen=True)
class BuildStep(DefaultModel):
    build: Callable[[Registry, Log], object]


M = TypeVar("M", bound=DefaultModel)


def default_models(generate: bool) -> list[DefaultModel]:
    """The default models in build order, the soonest to answer first; with `generate` False, no
    /generate models."""
    models = [DefaultModel("classify", Role.TEACHER), DefaultModel("classify", Role.STUDENT)]
    if generate:
        models = [DefaultModel("generate", Role.TEACHER), *models, DefaultModel("generate", Role.STUDENT)]
    return models


def default_steps(classify: ClassifyRecipe, generate: GenerateRecipe | None) -> list[BuildStep]:
    """`default_models`, each with how it is built; with `generate` None, no /generate models."""

    def generate_teacher(registry: Registry, log: Log) -> object:
        from distill.generate.teacher import ensure_generate_teacher

        return ensure_generate_teacher(registry)

    def classify_teacher(registry: Registry, log: Log) -> object:
        from distill.classify.build import build_teacher

        return build_teacher(registry, classify, log)

    def classify_student(registry: Registry, log: Log) -> object:
        from distill.classify.build import build_student

        teacher = registry.latest_of("classify", Role.TEACHER)
        if teacher is None:
            raise RuntimeError("no classify teacher to distil from")
        return build_student(registry, classify, teacher.ref, log)

    def generate_student(registry: Registry, log: Log) -> object:
        from distill.generate.build import build_generate_student

        assert generate is not None
        return build_generate_student(registry, generate, log=log)

    builders = {
        ("generate", Role.TEACHER): generate_teacher,
        ("classify", Role.TEACHER): classify_teacher,
        ("classify", Role.STUDENT): classify_student,
        ("generate", Role.STUDENT): generate_student,
    }
    return [BuildStep(m.task, m.role, builders[m.task, m.role]) for m in default_models(generate is not None)]


def missing(registry: Registry, models: list[M]) -> list[M]:
    """The models (or steps) whose task has no model in their role yet."""
    return [m for m in models if registry.latest_of(m.task, m.role) is None]


def planned(models: list[M]) -> BuildStatus:
    """A build about to start: every step pending."""
    return BuildStatus(steps=[StepStatus(task=m.task, role=m.role) for m in models], started_at=time.time())


def build_missing(registry: Registry, steps: list[BuildStep], status_file: Path, log: Log = print) -> bool:
    """Builds each missing step in order, rewriting `status_file` (durably) at every transition.
    A failed step is recorded with its error and the build goes on (a student of a failed teacher then
    fails too, saying so). Returns whether every step ended done."""
    todo = missing(registry, steps)
    status = planned(todo)
    status_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(status_file, status.model_dump(mode="json"))

    def save() -> None:
        write_json(status_file, status.model_dump(mode="json"))

    for step, entry in zip(todo, status.steps, strict=True):
        entry.state, entry.started_at = StepState.BUILDING, time.time()
        save()
        log(f"building the {step.label}")
        try:
            with listening(phase_recorder(entry, save)):
                step.build(registry, log)
        except Exception as exc:  # recorded for the operator; the next steps may still succeed
            entry.state, entry.error = StepState.FAILED, f"{type(exc).__name__}: {exc}"
            log(f"the {step.label} failed: {entry.error}\n{traceback.format_exc()}")
        else:
            built = registry.latest_of(step.task, step.role)
            entry.state, entry.ref = StepState.DONE, None if built is None else built.ref
        entry.ended_at = time.time()
        entry.eta_seconds = None
        save()
    status.ended_at = time.time()
    save()
    return all(s.state is StepState.DONE for s in status.steps)
