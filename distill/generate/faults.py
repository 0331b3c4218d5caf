"""A generate model that behaves like a broken one (real code, for fallback and rollback tests).

It wraps a loaded LM and, per its `FaultSpec`: sleeps `latency_ms` on every forward pass, raises on a
share `error_rate` of requests (at prefill), and on a share `wrong_rate` of prompts (fixed per prompt)
degenerates into repeating its first token forever — the repetition loop a bad student falls into,
which on-policy agreement alone does not catch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from distill.faults import FaultDice
from distill.generate.runner import CausalLM, DecodeState, TokenScores
from distill.registry import FaultSpec, Manifest

LOOP_LOGIT = 50.0  # far above any real logit: the loop token wins greedy and sampled decoding alike


@dataclass
class _LoopState(DecodeState):
    loop_token: int | None = None  # set on a degenerate sequence once its first token is known


class FaultyLM:
    def __init__(
        self,
        manifest: Manifest,
        inner: CausalLM,
        spec: FaultSpec,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.manifest = manifest
        self.inner = inner
        self.spec = spec
        self.dice = FaultDice(manifest.ref, spec, sleep)
        self.tokenizer = inner.tokenizer
        self.eos_ids = inner.eos_ids
        self.max_positions = inner.max_positions

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def encode(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        return self.inner.encode(prompt, messages)

    def decode_text(self, ids: list[int]) -> str:
        return self.inner.decode_text(ids)

    def _degenerate(self, prompt_ids: list[int]) -> bool:
        return self.dice.is_wrong(",".join(map(str, prompt_ids)))

    def prefill(self, ids: list[int]) -> tuple[DecodeState, torch.Tensor]:
        self.dice.delay()
        self.dice.maybe_fail()
        state, logits = self.inner.prefill(ids)
        looped = _LoopState(state.cache, state.length, loop_token=-1 if self._degenerate(ids) else None)
        return looped, logits

    def decode(self, state: DecodeState, token: int) -> torch.Tensor:
        self.dice.delay()
        logits = self.inner.decode(state, token)
        if isinstance(state, _LoopState) and state.loop_token is not None:
            if state.loop_token < 0:
                state.loop_token = token
            logits = logits.clone()
            logits[state.loop_token] = LOOP_LOGIT
        return logits

    def score(self, prompt_ids: list[int], completion_ids: list[int], k: int = 20) -> TokenScores:
        self.dice.delay()  # a slow teacher is slow on the shadow path too (full-queue tests)
        return self.inner.score(prompt_ids, completion_ids, k)

    def completion_logits(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        logits = self.inner.completion_logits(prompt_ids, completion_ids)  # (T, V)
        if self._degenerate(prompt_ids) and completion_ids:
            logits = logits.clone()
            logits[1:, completion_ids[0]] = LOOP_LOGIT
        return logits
