"""What every model import shares, whatever its task: the refusal users see, and the provenance a
manifest records (where the files came from, their sha256, when).

A refusal is one line naming what is wrong and what to do; the CLI prints it and exits 2.

>>> str(ImportRefused("no tokenizer.json in /m", "save it with tokenizer.save_pretrained('/m')"))
"no tokenizer.json in /m: save it with tokenizer.save_pretrained('/m')"
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distill.registry import TASK_NAME, Registry, Role, TaskKind

CHUNK = 1 << 20


class ImportRefused(ValueError):
    """A model that cannot be imported as asked; the message says why and what to do."""

    def __init__(self, problem: str, remedy: str) -> None:
        super().__init__(f"{problem}: {remedy}")
        self.problem = problem
        self.remedy = remedy


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(source: Path, files: list[Path]) -> dict[str, Any]:
    """The lineage `data` of an imported model: its source, the sha256 of each source file read, and
    when it was imported."""
    root = source if source.is_dir() else source.parent
    return {
        "source": str(source.resolve()),
        "sha256": {str(f.relative_to(root)): sha256_of(f) for f in sorted(files)},
        "imported": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def check_task(registry: Registry, task: str, kind: TaskKind) -> None:
    """Refuses a task name that cannot be, or a task that already exists with another kind."""
    if not re.match(TASK_NAME, task):
        raise ImportRefused(
            f"{task!r} is not a task name", "use lower-case letters, digits, '-' and '_' (e.g. --task topics)"
        )
    if task in set(TaskKind) and task != kind:
        raise ImportRefused(
            f"task {task!r} is the bundled {task} task",
            f"import a {kind} model into a task of its own (--task my-{kind})",
        )
    existing = {m.task_kind for m in registry.list() if m.task == task}
    if existing and kind not in existing:
        raise ImportRefused(
            f"task {task!r} is a {existing.pop()} task, and this is a {kind} model",
            f"import it into a {kind} task (--task NAME)",
        )


def default_name(task: str, role: Role, source: Path) -> str:
    """`<task>-<role>-<source name>`, reduced to the characters a model ref allows."""
    stem = re.sub(r"[^a-z0-9]+", "-", source.stem.lower()).strip("-") or "imported"
    return f"{task}-{role}-{stem}"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def guess_kind(source: Path) -> TaskKind:
    """A .gguf file or a folder whose config names a causal-LM architecture generates; anything else is
    taken for a classifier (whose importer then says precisely what is missing)."""
    if source.suffix == ".gguf":
        return TaskKind.GENERATE
    config = source / "config.json"
    if source.is_dir() and config.exists():
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except ValueError as exc:
            raise ImportRefused(f"{config} is not valid JSON", "save the model again") from exc
        if kind_of(architectures) is TaskKind.GENERATE:
            return TaskKind.GENERATE
    return TaskKind.CLASSIFY


def kind_of(architectures: list[str]) -> TaskKind | None:
    """What a Hugging Face config's architectures can serve: a sequence-classification head classifies,
    a language-model head generates; None when there is neither (a bare encoder, say)."""
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return TaskKind.CLASSIFY
    if any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return TaskKind.GENERATE
    return None


def hf_config(source: Path, kind: TaskKind) -> Any:
    """The folder's transformers config, refused unless it is a model of `kind` (one line each: no
    config, an architecture transformers does not know, the other kind, no head)."""
    from transformers import AutoConfig

    loader = "AutoModelForSequenceClassification" if kind is TaskKind.CLASSIFY else "AutoModelForCausalLM"
    if not (source / "config.json").exists():
        raise ImportRefused(f"no config.json in {source}", "pass a folder written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise ImportRefused(
            f"unknown architecture in {source / 'config.json'} ({one_line(exc)})",
            f"import a model transformers' {loader} can load",
        ) from exc
    architectures = list(config.architectures or [])
    found = kind_of(architectures)
    if found is not None and found is not kind:
        what = "a causal language model" if found is TaskKind.GENERATE else "a sequence classifier"
        raise ImportRefused(
            f"{source} is {what} ({architectures[0]}), not a {kind} model",
            f"import it into a {found} task (--kind {found})",
        )
    if found is None:
        head = "sequence-classification" if kind is TaskKind.CLASSIFY else "language-model"
        raise ImportRefused(
            f"{source} has no {head} head (architectures: {architectures or 'none'})",
            f"save a model loaded with {loader} (save_pretrained)",
        )
    return config


def require_file(folder: Path, name: str) -> Path:
    """`folder/name`, refused as a missing tokenizer when absent (the one file every import needs
    beside the weights)."""
    path = folder / name
    if not path.exists():
        raise ImportRefused(
            f"missing tokenizer: no {name} in {folder}",
            "save the model's fast tokenizer beside it (tokenizer.save_pretrained(folder))",
        )
    return path
