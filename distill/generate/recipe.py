"""What a /generate student build is made of (`GenerateRecipe`). Plain data, without torch: a gateway's
settings check `build_generate_recipe` against these fields at start.

    recipe = GenerateRecipe.for_budget(30).validated()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

PROMPTS_PER_BUDGET_MINUTE = 120  # ~720 sequences are trained on per minute


def _bf16_is_native() -> bool:
    from distill.generate.kd import bf16_is_native  # torch: only when a recipe is made

    return bf16_is_native()


@dataclass(frozen=True)
class GenerateRecipe:
    """Hyper-parameters of a /generate student build. The defaults fit the first start on 2 cores in
    ~9 minutes: teacher conversion ~20 s, held-out targets ~50 s, train targets ~3 min, KD 4 min,
    evaluation + speed ~30 s."""

    seed: int = 0  # prompt split and order, batch order
    # A user's prompts (JSONL) instead of the seed prompts, pinned by their hash: a re-distillation
    # replays them, and a changed file is refused rather than silently replayed.
    prompts_file: str | None = None
    prompts_sha256: str | None = None
    k: int = 20  # teacher top-k kept per position; the rest of the mass is one "other" bucket
    temperature: float = 1.0  # KD temperature T (soft term scaled by T²); T=1 matches greedy serving
    alpha: float = 0.5  # weight of the top-k KD term; 1 − alpha on hard CE with the teacher's tokens
    # (0.8 gave the same agreement at 4 min; the hard term is the teacher's argmax on greedy text)
    train_prompts: int = 512  # rounded up to whole shards; ~3 min of bf16 teacher generation. Fewer
    # overfit: 384 prompts × 7 epochs reached train loss 0.85 against held-out KL 4
    heldout_prompts: int = 64  # ~2.5k completion tokens to measure agreement on; never trained on
    max_new_tokens: int = 48  # teacher completion length cap; most summaries/answers end before it
    shard_size: int = 64  # prompts per cache file: the unit a longer run adds to
    teacher_batch_size: int = 32  # generation batch; 32 decodes ~9× the prompts/s of one stream
    # Train targets under bf16 autocast where the CPU has bf16 in hardware: 2× faster there, 98% top-1
    # the same as fp32; 5× slower where it is emulated (distill.generate.kd.bf16_is_native).
    teacher_bf16: bool = field(default_factory=_bf16_is_native)
    # held-out targets are always fp32, so the reported agreement is against the served teacher
    student_layers: tuple[int, ...] = (0, 1, 2, 3)  # teacher layers kept (embeddings/norm always);
    # every 4-layer pick starts far from the teacher and the first four train best (evenly spread
    # 0/10/20/29 reach lower agreement on the same budget). 4 layers in bf16 decode ~5× the teacher;
    # 5 would fall under 4×
    freeze_embeddings: bool = True  # tied embedding/head stays the teacher's: cheaper steps, no drift
    batch_size: int = 16  # sequences per KD step (~2 s per step with bf16 autocast on 2 cores)
    lr: float = 2e-3  # AdamW peak; warm-up 5 %, cosine to 10 % over the wall-time budget. 4-min
    # probes: 3e-4 → agreement 0.28, 1e-3 → 0.35, 2e-3 → 0.37
    budget_minutes: float = 4.0  # wall time of the KD loop (targets, eval and export come on top)
    max_steps: int | None = None  # a step count (it also paces the schedule); the budget still caps
    # bf16 autocast in the KD loop: ~2× faster steps on CPUs with AVX512-BF16, 5× slower without.
    train_bf16: bool = field(default_factory=_bf16_is_native)
    export_dtype: str = "bfloat16"  # saved weights; bf16 decodes ~1.4× faster than fp32 (memory-bound)
    threads: int = 2  # torch threads for the whole build, speed measurements included
    speed_tokens: int = 64  # greedy tokens per speed measurement run
    speed_repeats: int = 3  # best of this many runs (other load on the cores only slows runs down)

    def validated(self) -> GenerateRecipe:
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.export_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"export_dtype must be bfloat16 or float32, got {self.export_dtype!r}")
        if not self.student_layers or self.k < 1 or self.train_prompts < 1 or self.heldout_prompts < 1:
            raise ValueError(
                "student_layers, k, train_prompts and heldout_prompts must be non-empty/positive"
            )
        return self

    @classmethod
    def for_budget(cls, minutes: float, **overrides: Any) -> GenerateRecipe:
        """A recipe for `kdgate distill --task generate --budget MINUTES`: KD for that long, on ~120
        prompts per budget minute (≥ the default), so a long run sees each completion ~6 times rather
        than looping over a small set. Generating the prompts a cached set lacks comes on top of the
        budget (~3 prompts/s: a cold 60-minute run adds ~40 minutes once; later runs reuse them)."""
        base = cls(**overrides)
        per_minute = PROMPTS_PER_BUDGET_MINUTE
        prompts = max(base.train_prompts, math.ceil(per_minute * minutes / base.shard_size) * base.shard_size)
        return replace(base, budget_minutes=minutes, train_prompts=prompts)
