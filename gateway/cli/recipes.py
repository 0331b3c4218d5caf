"""What `kdgate distill` options resolve against: a task's kind, and recipe overrides given as JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer


def task_kind(task: str, state_dir: Path, registry_url: str | None = None) -> str:
    """`classify` or `generate`, the kind of the task named `task` (an exit 2 naming the tasks if none)."""
    from distill.registry import Registry

    kinds = Registry(state_dir, registry_url).task_kinds()
    if task not in kinds:
        raise typer.BadParameter(f"no task {task!r} (tasks: {', '.join(sorted(kinds))})", param_hint="--task")
    return kinds[task].value


def overridden(base: Any, overrides: str | None, option: str) -> Any:
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
        if "gate" in given:
            raise TypeError("the gate's fields go in --gate")
        # JSON has no tuples: a list given for a tuple field (student_layers, split) becomes one
        tuples = {k: tuple(v) for k, v in given.items() if isinstance(getattr(base, k), tuple)}
        return replace(base, **(given | tuples))
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(
            f"must be a JSON object of {type(base).__name__} fields: {exc}", param_hint=option
        ) from exc


def with_data_file(base: Any, data: Path, text_col: str, label_col: str) -> Any:
    """`base` (a ClassifyRecipe) on the user's file, pinned by path and sha256: re-distillations of its
    line replay these texts, and refuse them once the file has changed."""
    from distill.datafile import file_sha256

    sha = file_sha256(data) if data.is_file() else None
    return replace(
        base, data_file=str(data.resolve()), data_sha256=sha, text_column=text_col, label_column=label_col
    )
