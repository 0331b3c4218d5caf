"""Runs a registered causal LM one step at a time, and scores a finished completion by teacher forcing.

The gateway's generation scheduler drives `prefill` / `decode` itself (so it can interleave requests,
stream tokens and stop a request whose client went away); the shadow worker calls `score`.

Example::

    lm = load_lm(registry, "generate-teacher@1")
    ids = lm.encode(messages=[{"role": "user", "content": "Hi"}])
    state, logits = lm.prefill(ids)            # logits (V,) for the first new token
    logits = lm.decode(state, token_id)        # one more position
    scores = lm.score(ids, completion_ids, k=20)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.generate.topk import topk_kl, topk_targets
from distill.registry import Manifest, Registry, RegistryError, TaskKind


@dataclass
class DecodeState:
    """One sequence's KV cache and length; owned by whichever thread generates it."""

    cache: Any
    length: int


@dataclass(frozen=True)
class TokenScores:
    """The teacher's view of a completion, per completion position (T = completion length)."""

    topk_ids: np.ndarray  # (T, k) int32
    topk_logprobs: np.ndarray  # (T, k) float32
    tail_mass: np.ndarray  # (T,) float32
    teacher_argmax: np.ndarray  # (T,) int64

    def agreement(self, completion_ids: list[int]) -> np.ndarray:
        return self.teacher_argmax == np.asarray(completion_ids, dtype=np.int64)  # (T,)


class CausalLM:
    """A Hugging Face causal LM plus its tokenizer, inference only."""

    def __init__(self, manifest: Manifest, model: torch.nn.Module, tokenizer: Any) -> None:
        self.manifest = manifest
        self.model = model.eval()
        self.tokenizer = tokenizer
        generation_config: Any = getattr(model, "generation_config", None)
        eos = generation_config.eos_token_id if generation_config is not None else None
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None:
            eos_ids.append(tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        config: Any = getattr(model, "config", None)
        self.max_positions = int(getattr(config, "max_position_embeddings", 2048))

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def encode(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        """Token ids of a raw prompt, or of chat messages through the model's chat template."""
        if messages is not None:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return [int(i) for i in self.tokenizer.encode(prompt or "", add_special_tokens=False)]

    def decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> tuple[DecodeState, torch.Tensor]:
        from transformers import DynamicCache

        out = self.model(input_ids=torch.tensor([ids]), cache=DynamicCache(), use_cache=True)
        return DecodeState(out.cache, len(ids)), out.logits[0, -1]  # (V,)

    @torch.inference_mode()
    def decode(self, state: DecodeState, token: int) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([[token]]), cache=state.cache, use_cache=True)
        state.cache = out.cache
        state.length += 1
        return out.logits[0, -1]  # (V,)

    @torch.inference_mode()
    def completion_logits(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        """Teacher forcing: one pass over prompt + completion; row t predicts completion token t."""
        ids = torch.tensor([prompt_ids + completion_ids])
        logits = self.model(input_ids=ids, use_cache=False).logits[0]  # (P + T, V)
        start = len(prompt_ids) - 1
        return logits[start : start + len(completion_ids)]  # (T, V)

    def score(self, prompt_ids: list[int], completion_ids: list[int], k: int = 20) -> TokenScores:
        logits = self.completion_logits(prompt_ids, completion_ids)  # (T, V)
        ids, logprobs, tail = topk_targets(logits, k)
        return TokenScores(
            topk_ids=ids.numpy().astype(np.int32),
            topk_logprobs=logprobs.numpy(),
            tail_mass=tail.numpy(),
            teacher_argmax=ids[:, 0].numpy().astype(np.int64),
        )


def kl_against(scores: TokenScores, student_logits: torch.Tensor) -> np.ndarray:
    """Per-position KL(teacher ‖ student) on the teacher's top-k support + tail; (T,) nats."""
    return topk_kl(
        torch.from_numpy(scores.topk_ids.astype(np.int64)),
        torch.from_numpy(scores.topk_logprobs),
        torch.from_numpy(scores.tail_mass),
        student_logits,
    ).numpy()


def load_lm(registry: Registry, ref: str) -> CausalLM:
    """Loads a generate model from its registry folder (local files only)."""
    manifest = registry.get(ref)
    if manifest.task_kind != TaskKind.GENERATE or manifest.format != "torch":
        raise RegistryError(f"{ref} is not a generate model in torch format")
    return open_lm(manifest, registry.path(ref))


def open_lm(manifest: Manifest, directory: Path) -> CausalLM:
    """The causal LM whose Hugging Face files are in `directory` (a registry folder or a staging one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    # "auto": the stored dtype (the teacher is fp32; a student may be saved in bf16 to decode faster)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto", local_files_only=True)
    return CausalLM(manifest, model, tokenizer)
