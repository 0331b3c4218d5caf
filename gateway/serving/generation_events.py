"""What a generation request asks for (`GenerationParams`) and what the engine sends back to it (`Delta`s,
then `Finished` or `Failed`). Plain data without torch: the HTTP routes and the shadow speak in these
and import nothing of the model libraries; only a gateway that loads an LM imports the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: none reported; k: each chosen token's and its k most likely


@dataclass(frozen=True)
class TokenLogprob:
    """A completion token as a client sees it: its text, its log-probability under the serving model
    (before temperature and top-p), and the `top` alternatives asked for, most likely first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int  # completion tokens so far
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens since the last delta, when asked for


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    text: str
    completion_ids: list[int]
    token_logprobs: list[float]  # (T,) the model's log-probability of each token it chose
    topk: TopK | None  # (T, k) its own top-k per position, when the engine records them (the teacher)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # (T,) when the request asked for them


@dataclass
class TopK:
    """Top-k soft outputs recorded while generating: a teacher's completion needs no second pass."""

    ids: list[np.ndarray] = field(default_factory=list)  # T x (k,) int32
    logprobs: list[np.ndarray] = field(default_factory=list)  # T x (k,) float32
    tail: list[float] = field(default_factory=list)  # T


@dataclass(frozen=True)
class Failed:
    error: BaseException
    tokens: int  # how many completion tokens had been produced (0: failed before the first)


Event = Delta | Finished | Failed
