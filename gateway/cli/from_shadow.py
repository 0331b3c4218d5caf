"""`kdgate distill --from-shadow`: one re-distillation run of a task's student on its shadow log,
gated, with its result printed (and written for the loop)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from distill.gate import GateConfig
from durablefs import write_json
from gateway.cli.common import console
from gateway.cli.recipes import overridden

if TYPE_CHECKING:
    from distill.runs import RunResult

STEPS_TIME_CAP_MINUTES = 24 * 60.0  # `--steps` without `--budget`: the step count rules


def shadow_recipe(
    kind: str,
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
    """The re-distillation recipe of a task of `kind`, from the flags and then `--recipe`'s overrides.
    Each kind's module is imported only for its own runs: the classify one brings BERT's modelling
    code, seconds of a /generate run's start for nothing."""
    if steps is not None and kind != "generate":
        raise typer.BadParameter("only for a generate task", param_hint="--steps")
    common: dict[str, Any] = {"since": since, "until": until, "threads": threads, "seed": seed}
    if kind == "classify":
        from distill.classify.redistill import RedistillRecipe

        recipe: Any = RedistillRecipe(**common, epochs=epochs or 1, gate=_gate_config(gate, GateConfig()))
    else:
        from distill.generate.redistill import GENERATE_GATE, LMRedistillRecipe

        recipe = LMRedistillRecipe(**common, gate=_gate_config(gate, GENERATE_GATE))
        if budget:
            recipe = replace(recipe, budget_minutes=budget)
        if steps:  # the step count rules; a budget given beside it still caps the wall time
            recipe = replace(recipe, max_steps=steps, budget_minutes=budget or STEPS_TIME_CAP_MINUTES)
    return overridden(recipe, overrides, "--recipe")


def redistill_from_shadow(
    state_dir: Path,
    task: str,
    kind: str,
    parent: str | None,
    result_json: Path | None,
    recipe: Any,
    shadow_root: str | None,
    registry_url: str | None = None,
) -> None:
    run: Callable[..., RunResult]
    if kind == "classify":
        from distill.classify.redistill import redistill as run
    else:
        from distill.generate.redistill import redistill_generate as run
    _run_and_report(run, recipe, state_dir, task, shadow_root, parent, result_json, registry_url)


def _gate_config(overrides: str | None, base: GateConfig) -> GateConfig:
    return overridden(base, overrides, "--gate")


def _run_and_report(
    run: Callable[..., RunResult],
    recipe: object,
    state_dir: Path,
    task: str,
    shadow_root: str | None,
    parent: str | None,
    result_json: Path | None,
    registry_url: str | None,
) -> None:
    """One re-distillation run of either task (`distill.runs.redistill_run` with its task bound);
    a refused request (no parent, too small a window) is one red line and exit 1."""
    from distill.registry import Registry

    try:
        root = shadow_root or str(state_dir / "shadow")
        registry = Registry(state_dir, registry_url)
        result = run(registry, recipe, root, parent_ref=parent, log=console.print, task_name=task)
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
