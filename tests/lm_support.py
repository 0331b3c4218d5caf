"""A registry with the real /generate teacher and a tiny student, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from distill.lm_teacher import ensure_generate_teacher
from distill.registry import Lineage, Manifest, Registry

STUDENT_NAME = "generate-student"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def register_small_student(registry: Registry, teacher: Manifest, seed: int = 0) -> Manifest:
    """A 2-layer, hidden-64 Llama on the teacher's tokenizer: untrained (its text is noise) but a real
    model in every way the gateway cares about, and fast: serving tests need no training run."""
    teacher_dir = registry.path(teacher.ref)
    config = LlamaConfig.from_pretrained(teacher_dir)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 64, 128
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with registry.stage(STUDENT_NAME) as staging:
        model.save_pretrained(staging.path, safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copy(teacher_dir / name, staging.path / name)
        manifest = Manifest(
            name=STUDENT_NAME,
            version=registry.next_version(STUDENT_NAME),
            task="generate",
            role="student",
            format="torch",
            files=sorted(p.name for p in staging.path.iterdir() if p.is_file()),
            tokenizer="tokenizer.json",
            max_length=2048,
            lineage=Lineage(teacher=teacher.ref, recipe={"name": "random-init-test-student"}, seed=seed),
        )
        return staging.commit(manifest)


def build_generate_state(state: Path) -> tuple[str, str]:
    registry = Registry(state)
    teacher = ensure_generate_teacher(registry)
    student = register_small_student(registry, teacher)
    return teacher.ref, student.ref
