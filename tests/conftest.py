"""Shared fixtures: a tiny but real registry (teacher + ONNX student built from a seeded subset)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from distill.classify.build import ClassifyRecipe, ensure_default_classify_models
from distill.registry import Registry

# Small enough to build in ~30 s on 2 cores, real in every other respect.
TINY_RECIPE = ClassifyRecipe(teacher_examples=320, student_examples=320, eval_examples=200, threads=2)


@pytest.fixture(scope="session")
def built_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding classify-teacher@1 and classify-student@1, built once per test session."""
    state = tmp_path_factory.mktemp("built-state")
    ensure_default_classify_models(Registry(state), TINY_RECIPE, log=lambda _: None)
    return state


@pytest.fixture
def state_dir(built_state: Path, tmp_path: Path) -> Path:
    """A private copy of the built state (hard links: instant, and the registry never rewrites files)."""
    target = tmp_path / "state"
    shutil.copytree(built_state, target, copy_function=os.link)
    return target


@pytest.fixture(scope="session")
def generate_built_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding generate-teacher@1 (the real SmolLM2) and a tiny-budget generate-student@1."""
    from tests.lm_support import build_generate_state

    state = tmp_path_factory.mktemp("generate-state")
    build_generate_state(state)
    return state


@pytest.fixture
def generate_state_dir(generate_built_state: Path, tmp_path: Path) -> Path:
    target = tmp_path / "gstate"
    shutil.copytree(generate_built_state, target, copy_function=os.link)
    return target
