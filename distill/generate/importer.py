"""Imports a user's /generate model into the registry: a Hugging Face causal-LM folder (safetensors
weights and a fast tokenizer), or a GGUF file (dequantized once, with the tokenizer it carries).

The model is loaded and run before anything is registered: one greedy decode of a short chat gives its
per-token p50. A student must share its teacher's tokenizer (top-k KD compares token ids). Files go
through a staging folder, so a refused or failed import leaves nothing registered.

Example::

    manifest = import_causal_lm(Registry(state_dir), Path("my-llama-folder"), role=Role.TEACHER)
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from distill.generate.runner import open_lm
from distill.generate.teacher import convert_gguf
from distill.importing import (
    ImportRefused,
    check_task,
    default_name,
    hf_config,
    one_line,
    provenance,
    require_file,
)
from distill.registry import Lineage, Manifest, Registry, Role, TaskKind

TOKENIZER_FILE = "tokenizer.json"
MAX_LENGTH_CAP = 2048  # the gateway's prompt + completion budget; a model's own limit may be lower
PROBE = [{"role": "user", "content": "Say hello in five words."}]
PROBE_TOKENS = 8


def import_causal_lm(
    registry: Registry,
    source: Path,
    *,
    role: Role,
    task: str = "generate",
    name: str | None = None,
) -> Manifest:
    """Registers the causal LM at `source` as `name@<next version>` in `task`; raises `ImportRefused`."""
    source = Path(source)
    check_task(registry, task, TaskKind.GENERATE)
    if not source.exists():
        raise ImportRefused(f"{source} does not exist", "pass a Hugging Face model folder or a .gguf file")
    teacher = registry.latest_of(task, Role.TEACHER) if role is Role.STUDENT else None
    name = name or default_name(task, role, source)
    with registry.stage(name) as staging:
        if source.is_dir():
            _check_hf_folder(source)
            read = sorted(p for p in source.iterdir() if p.is_file())
            for path in read:
                shutil.copyfile(path, staging.path / path.name)
        elif source.suffix == ".gguf":
            _convert(source, staging.path)
            read = [source]
        else:
            raise ImportRefused(
                f"{source} is neither a model folder nor a .gguf file",
                "pass a Hugging Face causal-LM folder (safetensors) or a GGUF file",
            )
        if teacher is not None:
            _check_same_tokenizer(staging.path, registry.path(teacher.ref), teacher.ref)
        config = AutoConfig.from_pretrained(staging.path, local_files_only=True)
        manifest = Manifest(
            name=name,
            version=registry.next_version(name),
            task=task,
            task_kind=TaskKind.GENERATE,
            role=role,
            format="torch",
            files=sorted(p.name for p in staging.path.iterdir() if p.is_file()),
            tokenizer=TOKENIZER_FILE,
            max_length=min(MAX_LENGTH_CAP, int(getattr(config, "max_position_embeddings", MAX_LENGTH_CAP))),
            lineage=Lineage(
                teacher=teacher.ref if teacher else None,
                data=provenance(source, read),
                recipe={"name": "import", "from": "huggingface" if source.is_dir() else "gguf"},
            ),
        )
        metrics = measure(manifest, staging.path)
        return staging.commit(manifest.model_copy(update={"metrics": metrics}))


def measure(manifest: Manifest, directory: Path) -> dict[str, float]:
    """Weights on disk, and the p50 of one greedy decode step after a short chat prompt (one run of
    PROBE_TOKENS steps); loading and running it is also the import's proof that the model works."""
    try:
        lm = open_lm(manifest, directory)
        state, logits = lm.prefill(lm.encode(messages=PROBE))
        steps = []
        for _ in range(PROBE_TOKENS):
            started = time.perf_counter()
            logits = lm.decode(state, int(torch.argmax(logits)))
            steps.append((time.perf_counter() - started) * 1000.0)
    except Exception as exc:  # transformers, safetensors and torch each raise their own on a bad model
        raise ImportRefused(
            f"the model does not load or run ({one_line(exc)})",
            "the file may be truncated or corrupt: save the model again",
        ) from exc
    weights = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    return {"size_mb": round(weights / 1e6, 2), "p50_ms_per_token": round(statistics.median(steps), 3)}


def _check_hf_folder(source: Path) -> None:
    hf_config(source, TaskKind.GENERATE)
    require_file(source, TOKENIZER_FILE)
    if not any(source.glob("*.safetensors")):
        raise ImportRefused(
            f"no safetensors weights in {source}", "save the model with save_pretrained (safetensors)"
        )


def _convert(source: Path, target: Path) -> None:
    try:
        convert_gguf(target, source)
    except Exception as exc:  # the gguf reader and transformers raise their own on a bad file
        raise ImportRefused(
            f"cannot read {source} as a GGUF model ({one_line(exc)})",
            "the file may be truncated or corrupt, or of an architecture transformers cannot load",
        ) from exc


def _check_same_tokenizer(student: Path, teacher: Path, teacher_ref: str) -> None:
    """Top-k KD and the shadow's KL compare token ids: the vocabularies must be identical."""
    mine = AutoTokenizer.from_pretrained(student, local_files_only=True).get_vocab()
    theirs = AutoTokenizer.from_pretrained(teacher, local_files_only=True).get_vocab()
    if mine != theirs:
        raise ImportRefused(
            f"the student's tokenizer differs from its teacher {teacher_ref}'s "
            f"({len(mine)} vs {len(theirs)} tokens)",
            "a generate student must use its teacher's tokenizer (distil one with kdgate distill)",
        )
