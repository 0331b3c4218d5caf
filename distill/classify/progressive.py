"""Progressive KD in two steps, teacher → assistant → student: a student far smaller than its teacher
learns better from a model between the two in size than from the teacher itself (Mirzadeh et al.,
"Improved Knowledge Distillation via Teacher Assistant", 2020). The assistant is a student like any
other, registered with its own figures; the student then distils on its logits (`ClassifyRecipe.via`).

Example::

    assistant, student = build_progressive(registry, ClassifyRecipe(student_layers=1), TEACHER, via_layers=3)
    assert student.lineage.via == assistant.ref and student.lineage.teacher == assistant.lineage.teacher
"""

from __future__ import annotations

from dataclasses import replace

from distill.classify.assistant import progressive_problem
from distill.classify.build import Log, build_student
from distill.classify.recipe import ClassifyRecipe
from distill.gate import GateConfig
from distill.registry import Manifest, Registry


def build_progressive(
    registry: Registry,
    recipe: ClassifyRecipe,
    teacher_ref: str,
    via_layers: int,
    log: Log,
    gate_config: GateConfig | None = None,
) -> tuple[Manifest, Manifest]:
    """Builds and registers the assistant (the teacher's first `via_layers` layers distilled from it, the
    task's next student version), then the student of `recipe` distilled via it; returns both.

    The assistant is a plain cut: unpruned and at the teacher's width, so that it sits between the two
    in size whatever the student's pruning or width. `gate_config` gates the student only: the assistant
    is a stepping stone, never served unless someone rolls it out."""
    problem = progressive_problem(recipe, via_layers)
    if problem is not None:
        raise ValueError(problem)
    step = replace(recipe, student_layers=via_layers, prune=0.0, student_width=None, via=None)
    assistant = build_student(registry, step, teacher_ref, log)
    student = build_student(registry, replace(recipe, via=assistant.ref), teacher_ref, log, gate_config)
    return assistant, student
