"""The /generate student: initialisation, token-level KD training, held-out evaluation, decode speed.

The training loop knows nothing about where its targets came from: it takes a `TargetSet` (sequences
with the teacher's top-k + tail at each completion token), whether built from teacher completions of
seed prompts or from the shadow log. The loss is, per completion token,

    alpha * T² * KL_topk+tail(teacher_T ‖ student_T) + (1 − alpha) * CE(student, teacher's argmax)

and only the hidden states of completion positions go through the 49,152-way head (the head is most of
the compute of a model this small).

Threads: the caller sets `torch.set_num_threads` once (the build uses `recipe.threads`); speed is
measured with whatever is set, and reported with it.

Example::

    student = layer_dropped_student(teacher, (0, 10, 20, 29))
    summary = train_kd(student, targets, seconds=300, ...)
    evaluate(student, heldout_targets)     # {"agreement": …, "kl": …, "perplexity": …}
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.generate.degeneracy import is_degenerate
from distill.generate.targets import TargetSet
from distill.generate.topk import topk_kl
from distill.progress import ProgressBar
from distill.trainer import length_bucketed_batches

log = logging.getLogger("kdgate.lm_kd")


@functools.cache
def bf16_is_native() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), so that bf16
    autocast speeds up training and batched teacher passes. Without it oneDNN emulates bf16: a
    (960 × 576) @ (576 × 49,152) product is ~5× slower in bf16 than in fp32 on an AVX2 CPU.
    (Single-token decoding is another matter: memory-bound, it stays faster from bf16 weights.)"""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


def load_student_lm(directory: Path) -> Any:
    """A generate student as saved by the build, in the dtype it was saved in (bfloat16 by default:
    decode is memory-bound and bf16 halves the bytes read per token). `from_pretrained(dir,
    dtype=torch.float32)` also works, at fp32 speed."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype="auto", local_files_only=True).eval()


def layer_dropped_student(teacher: Any, layers: tuple[int, ...]) -> Any:
    """A fresh fp32 Llama with the teacher's embeddings (tied head), final norm and the chosen layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict({**teacher.config.to_dict(), "num_hidden_layers": len(layers)})
    student = LlamaForCausalLM(config).float()
    state = teacher.state_dict()
    mapped = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    for new, old in enumerate(layers):
        prefix = f"model.layers.{old}."
        mapped.update(
            {f"model.layers.{new}.{k[len(prefix) :]}": v for k, v in state.items() if k.startswith(prefix)}
        )
    student.load_state_dict(mapped, strict=False)  # lm_head.weight is tied to the embeddings
    student.generation_config = teacher.generation_config
    return student


def lr_factor(progress: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine down to `floor` (pure).

    `progress` is the share of the run done (steps when a step count is given, else wall time), clamped
    to [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return (p / warmup) * (1 - floor) + floor if warmup > 0 else 1.0
    span = max(1e-9, 1 - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (p - warmup) / span))


@dataclass(frozen=True)
class KDBatch:
    input_ids: torch.Tensor  # (B, T) right-padded; padding sits after every position that is scored
    loss_mask: torch.Tensor  # (B, T) bool; position t predicts token t + 1, a completion token
    topk_ids: torch.Tensor  # (N, k) the teacher's top-k at the N = loss_mask.sum() positions, row-major
    topk_logprobs: torch.Tensor  # (N, k)
    tail: torch.Tensor  # (N,)
    targets: torch.Tensor  # (N,) the teacher's argmax: its own token on teacher completions, and the
    # right hard target on a student's (shadow) completion, whose tokens may be the student's mistakes


def make_batch(data: TargetSet, indices: Iterable[int], pad_id: int) -> KDBatch:
    rows = [int(r) for r in indices]
    width = int(max(data.lengths()[rows]))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, T)
    t_starts = data.target_starts
    spans = []
    for b, i in enumerate(rows):
        seq = data.sequence(i)
        ids[b, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
        mask[b, data.prompt_lens[i] - 1 : len(seq) - 1] = True
        spans.append(np.arange(t_starts[i], t_starts[i + 1]))
    picked = np.concatenate(spans)
    return KDBatch(
        ids,
        mask,
        torch.from_numpy(data.topk_ids[picked].astype(np.int64)),
        torch.from_numpy(data.topk_logprobs[picked]),
        torch.from_numpy(data.tail[picked]),
        torch.from_numpy(data.topk_ids[picked, 0].astype(np.int64)),
    )


def completion_logits(model: Any, batch: KDBatch) -> torch.Tensor:
    """(N, V) logits at the scored positions. No attention mask: right padding never precedes a
    scored position, and a plain causal mask takes the fast SDPA path."""
    hidden = model.model(input_ids=batch.input_ids).last_hidden_state  # (B, T, d)
    return model.lm_head(hidden[batch.loss_mask])  # (N, V)


def kd_loss(logits: torch.Tensor, batch: KDBatch, temperature: float, alpha: float) -> torch.Tensor:
    """alpha·T²·KL(top-k + tail) + (1 − alpha)·CE on the completion tokens; mean over the N positions."""
    logits = logits.float()  # (N, V)
    soft = topk_kl(batch.topk_ids, batch.topk_logprobs, batch.tail, logits, temperature).mean()
    hard = F.cross_entropy(logits, batch.targets) if alpha < 1 else logits.new_zeros(())
    return alpha * temperature**2 * soft + (1 - alpha) * hard


class KDRecipe(Protocol):
    """What a build's and a re-distillation's recipes both say about their KD loop."""

    # Read-only (the recipes are frozen dataclasses).
    @property
    def budget_minutes(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def temperature(self) -> float: ...
    @property
    def alpha(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def train_bf16(self) -> bool: ...
    @property
    def max_steps(self) -> int | None: ...


def kd_options(recipe: KDRecipe) -> dict[str, Any]:
    """`train_kd`'s hyper-parameters from a recipe."""
    return {
        "seconds": 60 * recipe.budget_minutes,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "temperature": recipe.temperature,
        "alpha": recipe.alpha,
        "seed": recipe.seed,
        "bf16": recipe.train_bf16,
        "max_steps": recipe.max_steps,
    }


def train_kd(
    model: Any,
    data: TargetSet,
    *,
    seconds: float,
    batch_size: int,
    lr: float,
    temperature: float,
    alpha: float,
    seed: int,
    pad_id: int,
    bf16: bool,
    freeze_embeddings: bool = True,
    weight_decay: float = 0.01,
    max_steps: int | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 50,
    desc: str = "distil",
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Trains `model` in place for `seconds` of wall time (or `max_steps`), epoch after epoch of
    length-bucketed batches; AdamW with `lr_factor(progress)`. Returns a summary.

    Progress is the share of `max_steps` done when a step count is given (the run is then a pure
    function of its seed: same data, same weights), else the share of the time budget spent.

    With `checkpoint`, weights, optimizer, RNG and position (epoch, batch, step, training seconds so far)
    are saved there every `checkpoint_every` steps, and a run of the same plan resumes from it: a
    step-bound run ends with the weights an uninterrupted one would have; a time-bound one trains for
    what is left of its budget.

    `on_step(step)` is called after each step and its checkpoint, if one was due, with the steps done so
    far; an exception it raises ends the run there, as a kill between two steps would.
    """
    torch.manual_seed(seed)
    model.model.embed_tokens.weight.requires_grad_(not freeze_embeddings)  # tied: freezes the head too
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    lengths = data.lengths().tolist()
    plan: dict[str, Any] = {"sequences": len(data), "tokens": len(data.topk_ids), "batch_size": batch_size}
    plan |= {"seed": seed, "seconds": seconds, "max_steps": max_steps}
    at: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "elapsed": 0.0, "running": math.nan, "seen": 0}
    resumed_from = 0
    if checkpoint is not None and (saved := load_checkpoint(checkpoint, model, optimizer, plan)):
        at, resumed_from = saved, int(saved["step"])
    model.train()
    started = time.monotonic() - float(at["elapsed"])  # a resumed run has spent part of its budget

    def elapsed_now() -> float:
        return time.monotonic() - started

    step, epoch, running, seen = int(at["step"]), int(at["epoch"]), float(at["running"]), int(at["seen"])
    skip = int(at["batch"])  # batches of the resumed epoch already trained on
    done = False
    with ProgressBar(total=round(seconds), desc=desc, unit="s", dynamic_ncols=True) as bar:
        while not done:
            batches = length_bucketed_batches(lengths, batch_size, seed + epoch)
            for index, rows in enumerate(batches):
                if index < skip:
                    continue
                elapsed = elapsed_now()
                if elapsed >= seconds or (max_steps is not None and step >= max_steps):
                    done = True
                    break
                progress = step / max_steps if max_steps else elapsed / seconds
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor(progress)
                batch = make_batch(data, rows, pad_id)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = completion_logits(model, batch)  # (N, V)
                loss = kd_loss(logits, batch, temperature, alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
                step, seen = step + 1, seen + len(batch.targets)
                bar.set_postfix(loss=f"{running:.3f}", step=step, epoch=epoch)
                bar.update(min(round(seconds), round(time.monotonic() - started)) - bar.n)
                at = {"step": step, "epoch": epoch, "batch": index + 1, "running": running, "seen": seen}
                if checkpoint is not None and step % checkpoint_every == 0:
                    save_checkpoint(checkpoint, model, optimizer, plan, at | {"elapsed": elapsed_now()})
                if on_step is not None:
                    on_step(step)
            skip = 0
            epoch += 1
    if max_steps is not None and step < max_steps:
        log.warning("the time budget (%.0f s) ran out at step %d of %d", seconds, step, max_steps)
    if checkpoint is not None and step % checkpoint_every != 0:  # a run killed while gating resumes
        save_checkpoint(checkpoint, model, optimizer, plan, at | {"elapsed": elapsed_now()})  # to the gate
    model.eval()
    return {
        "steps": step,
        "epochs": round(seen / max(1, len(data.topk_ids)), 2),
        "final_loss": running,
        "train_seconds": round(time.monotonic() - started, 1),
        "resumed_from_step": resumed_from,
    }


@torch.inference_mode()
def evaluate(model: Any, data: TargetSet, pad_id: int, batch_size: int = 16) -> dict[str, float]:
    """Teacher forcing on teacher completions, over every completion token of `data`:

    - agreement: share of positions where the student's argmax is the teacher's argmax;
    - kl: mean KL(teacher ‖ student) on the teacher's top-k + tail at T = 1 (nats per token);
    - perplexity: exp of the student's mean cross-entropy on the completion tokens (the teacher's text).
    """
    agree = kl = nll = 0.0
    count = 0
    for start in range(0, len(data), batch_size):
        batch = make_batch(data, range(start, min(start + batch_size, len(data))), pad_id)
        logits = completion_logits(model, batch).float()  # (N, V)
        agree += (logits.argmax(-1) == batch.topk_ids[:, 0]).sum().item()
        kl += topk_kl(batch.topk_ids, batch.topk_logprobs, batch.tail, logits).sum().item()
        nll += F.cross_entropy(logits, batch.targets, reduction="sum").item()
        count += len(batch.targets)
    return {
        "agreement": agree / count,
        "kl": kl / count,
        "perplexity": math.exp(nll / count),
        "tokens": count,
    }


@torch.inference_mode()
def greedy_tokens_per_s(model: Any, prompt_ids: list[int], new_tokens: int = 64, repeats: int = 3) -> float:
    """Batch-1 greedy decode speed with a KV cache (prefill excluded), best of `repeats`: the best run
    is the one least disturbed by whatever else shares the cores."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt_ids])  # (1, P)
    best = 0.0
    for _ in range(repeats + 1):  # the first run warms up allocator and kernels
        out = model(input_ids=ids, cache=DynamicCache(), use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        started = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, cache=out.cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        best = max(best, new_tokens / (time.perf_counter() - started))
    return best


def degenerate_rate(model: Any, prompts: list[list[int]], new_tokens: int, eos: int) -> float:
    """Share of greedy completions that loop (`is_degenerate`), as the shadow measures served ones.

    The prompts decode as one left-padded batch: the LM head over the whole vocabulary dominates a
    small student's step, and one batched step costs little more than one prompt's."""
    if not prompts:
        return 0.0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])  # (B, width)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, width)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    loops = sum(is_degenerate(_through_eos(row[width:].tolist(), eos)) for row in out)
    return loops / len(prompts)


def _through_eos(ids: list[int], eos: int) -> list[int]:
    """A batched completion as the prompt alone would have produced it: up to its first `eos`, which
    ends it (the batch pads finished rows with more)."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids
