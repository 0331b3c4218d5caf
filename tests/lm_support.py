"""A registry with the real /generate teacher and a real (tiny-budget) distilled student."""

from __future__ import annotations

from pathlib import Path

from distill.generate.build import TINY_GENERATE_RECIPE, ensure_default_generate_models
from distill.registry import Registry


def build_generate_state(state: Path) -> None:
    """generate-teacher@1 (SmolLM2 from the packaged GGUF) and generate-student@1 distilled from it with
    TINY_GENERATE_RECIPE: the real build path, at a budget that makes a poor but real student."""
    ensure_default_generate_models(Registry(state), TINY_GENERATE_RECIPE, log=lambda _: None)
