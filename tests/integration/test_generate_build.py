"""The /generate student built for real with TINY_GENERATE_RECIPE: registered, cached, loadable, generates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from distill.generate.build import (
    STUDENT_NAME,
    TINY_GENERATE_RECIPE,
    build_generate_student,
    ensure_default_generate_models,
)
from distill.generate.kd import load_student_lm
from distill.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generate_state(generate_built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's build (conftest: teacher + TINY_GENERATE_RECIPE student)."""
    state = tmp_path_factory.mktemp("generate-build") / "state"
    shutil.copytree(generate_built_state, state, copy_function=os.link)
    return state


def test_the_student_is_registered_with_lineage_and_figures(generate_state: Path) -> None:
    registry = Registry(generate_state)
    student = registry.get(f"{STUDENT_NAME}@1")
    assert (student.task, student.role, student.format, student.tokenizer) == (
        "generate",
        "student",
        "torch",
        "tokenizer.json",
    )
    assert student.lineage.teacher == "generate-teacher@1" and student.lineage.parent is None
    assert student.lineage.recipe["k"] == 20 and student.lineage.recipe["name"] == "topk-kd-seqkd"
    assert student.lineage.data["sizes"]["train_prompts"] == TINY_GENERATE_RECIPE.train_prompts
    for key in ("heldout_agreement", "heldout_kl", "heldout_perplexity", "tokens_per_s", "speedup"):
        assert key in student.metrics
    assert 0.0 <= student.metrics["heldout_agreement"] <= 1.0
    assert {"config.json", "model.safetensors", "chat_template.jinja", "tokenizer.json"} <= set(student.files)
    assert all((registry.path(student.ref) / f).exists() for f in student.files)


def test_the_student_loads_and_generates_with_the_teacher_chat_template(generate_state: Path) -> None:
    from transformers import AutoTokenizer

    directory = Registry(generate_state).path(f"{STUDENT_NAME}@1")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = load_student_lm(directory)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Summarize: the match ended in a draw."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=2)
    assert out.shape[1] > ids.shape[1]
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_second_start_reuses_targets_and_a_warm_start_adds_a_version(generate_state: Path) -> None:
    registry = Registry(generate_state)
    ensure_default_generate_models(registry, TINY_GENERATE_RECIPE, log=lambda _: None)
    assert [m.ref for m in registry.list() if m.name == STUDENT_NAME] == [f"{STUDENT_NAME}@1"]
    shards = sorted((generate_state / "cache" / "lm_targets" / "generate-teacher@1").glob("*/shard-*.npz"))
    assert len(shards) == 3  # two train shards of 8 prompts, one held-out shard
    stamps = [p.stat().st_mtime_ns for p in shards]
    child = build_generate_student(
        registry, TINY_GENERATE_RECIPE, parent=f"{STUDENT_NAME}@1", log=lambda _: None
    )
    assert child.ref == f"{STUDENT_NAME}@2" and child.lineage.parent == f"{STUDENT_NAME}@1"
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # cached targets were reused, not rewritten
