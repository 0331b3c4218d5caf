"""Which registered model a classify student may distil through (progressive KD, teacher → assistant →
student): one that answers the teacher's question with the teacher's labels, so that its logits can
stand in for the teacher's as soft targets, class for class.

Example::

    assistant = assistant_for(registry, teacher, recipe)  # None without `recipe.via`; ValueError if unfit
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from distill.registry import Manifest, Registry, RegistryError, TaskKind

if TYPE_CHECKING:
    from distill.classify.recipe import ClassifyRecipe

MAX_LAYERS = 6  # the teacher's depth: an assistant is cut from its first layers


def via_problem(teacher: Manifest, assistant: Manifest) -> str | None:
    """Why `assistant` cannot stand between `teacher` and a new student (one line), or None if it can."""
    if assistant.ref == teacher.ref:
        return f"{assistant.ref} is the teacher itself: --via names a model between it and the student"
    if assistant.task_kind != TaskKind.CLASSIFY or assistant.kind != "model":
        what = "fault wrapper" if assistant.kind == "fault" else f"{assistant.task_kind} model"
        return f"{assistant.ref} is a {what}, not a classify model"
    if assistant.task != teacher.task:
        return f"{assistant.ref} is a model of task {assistant.task!r}, not of {teacher.task!r}"
    if assistant.labels != teacher.labels:
        return f"{assistant.ref} has labels {assistant.labels}, {teacher.ref} has {teacher.labels}"
    return None


def via_layers_problem(via_layers: int, student_layers: int) -> str | None:
    """Why an assistant `via_layers` deep cannot sit between the teacher and a student `student_layers`
    deep, or None: it must be deeper than the student and no deeper than the teacher.

    >>> via_layers_problem(4, 2) is None
    True
    >>> via_layers_problem(2, 2)
    'an assistant of 2 layers must be deeper than the student (--layers 2) and at most 6 deep'
    """
    if student_layers < via_layers <= MAX_LAYERS:
        return None
    return (
        f"an assistant of {via_layers} layers must be deeper than the student (--layers {student_layers}) "
        f"and at most {MAX_LAYERS} deep"
    )


def progressive_problem(recipe: ClassifyRecipe, via_layers: int) -> str | None:
    """Why `recipe` cannot be built via a new assistant `via_layers` deep (one line), or None. Checked
    before the assistant is built, so that a recipe that cannot work costs no training: the depths, then
    the recipe as its student will run, with an assistant named."""
    problem = via_layers_problem(via_layers, recipe.student_layers)
    if problem is not None:
        return problem
    try:
        replace(recipe, via=recipe.via or "the assistant to build").validated()
    except ValueError as exc:
        return str(exc)
    return None


def assistant_for(registry: Registry, teacher: Manifest, recipe: ClassifyRecipe) -> Manifest | None:
    """The registered model `recipe.via` names, checked against `teacher`; None when the recipe has no
    assistant. A ValueError naming what is wrong: no such model, or one that does not fit."""
    if recipe.via is None:
        return None
    try:
        assistant = registry.get(recipe.via)
    except (RegistryError, ValueError) as exc:
        raise ValueError(f"{recipe.via} is not a registered model") from exc
    problem = via_problem(teacher, assistant)
    if problem is not None:
        raise ValueError(problem)
    return assistant
