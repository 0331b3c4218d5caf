"""Teacher completions of seed prompts and the teacher's top-k distribution over them, cached on disk.

Sequence-level KD data: the teacher answers each prompt greedily (batched, left-padded: one stream
decodes at ~16 tokens/s, a batch of 32 at ~150), and at every completion position we keep its top-k
log-probabilities plus the tail mass. The logits come from the generation itself (`output_logits`): with
a KV cache they are the logits of one teacher-forced pass over prompt + completion, without paying for
that second pass (which would cost as much as generating). A unit test checks the equivalence.

Targets are cached in shards of `shard_size` prompts under
`<state_dir>/cache/lm_targets/<teacher ref>/<fingerprint>/`, keyed by everything that changes them, so a
second build or a longer budget run with more prompts only generates the shards it lacks.

Example::

    targets = cached_targets(cache_root, teacher_ref, key, prompts, lambda chunk: teacher_targets(...))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.generate.data import Prompt
from distill.generate.topk import topk_targets
from distill.progress import ProgressBar
from durablefs import write_with


@dataclass(frozen=True)
class TargetSet:
    """n sequences (prompt + completion) with the teacher's top-k at each of the C completion tokens.

    Row j of the target arrays predicts completion token j; rows of sequence i are
    `target_starts[i]:target_starts[i+1]`, and its completion is the tail of its tokens of that length.
    """

    tokens: np.ndarray  # (S,) int32, all sequences concatenated
    seq_starts: np.ndarray  # (n + 1,) int64 offsets into tokens
    prompt_lens: np.ndarray  # (n,) int32
    topk_ids: np.ndarray  # (C, k) int32
    topk_logprobs: np.ndarray  # (C, k) float32
    tail: np.ndarray  # (C,) float32

    def __len__(self) -> int:
        return len(self.prompt_lens)

    @property
    def target_starts(self) -> np.ndarray:  # (n + 1,)
        completion = np.diff(self.seq_starts) - self.prompt_lens
        return np.concatenate([[0], np.cumsum(completion)]).astype(np.int64)

    def sequence(self, i: int) -> np.ndarray:  # (L_i,)
        return self.tokens[self.seq_starts[i] : self.seq_starts[i + 1]]

    def lengths(self) -> np.ndarray:  # (n,)
        return np.diff(self.seq_starts)

    def completion(self, i: int) -> np.ndarray:  # (c_i,)
        return self.sequence(i)[self.prompt_lens[i] :]

    @classmethod
    def from_sequences(
        cls,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        ids: np.ndarray,
        logprobs: np.ndarray,
        tail: np.ndarray,
    ) -> TargetSet:
        """Builds a set from per-sequence ids; `ids`/`logprobs`/`tail` are the completions' rows, in order
        (this is also how shadow-log samples become training data)."""
        seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
        if sum(len(c) for c in completions) != len(ids):
            raise ValueError("one target row per completion token is required")
        return cls(
            tokens=np.asarray([t for s in seqs for t in s], dtype=np.int32),
            seq_starts=np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64),
            prompt_lens=np.asarray([len(p) for p in prompts], dtype=np.int32),
            topk_ids=np.asarray(ids, dtype=np.int32).reshape(len(ids), -1),
            topk_logprobs=np.asarray(logprobs, dtype=np.float32).reshape(len(ids), -1),
            tail=np.asarray(tail, dtype=np.float32).reshape(-1),
        )

    @classmethod
    def concat(cls, parts: Sequence[TargetSet]) -> TargetSet:
        offsets = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
        return cls(
            tokens=np.concatenate([p.tokens for p in parts]),
            seq_starts=np.concatenate(
                [[0]] + [p.seq_starts[1:] + off for p, off in zip(parts, offsets, strict=True)]
            ).astype(np.int64),
            prompt_lens=np.concatenate([p.prompt_lens for p in parts]),
            topk_ids=np.concatenate([p.topk_ids for p in parts]),
            topk_logprobs=np.concatenate([p.topk_logprobs for p in parts]),
            tail=np.concatenate([p.tail for p in parts]),
        )

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        write_with(path, lambda handle: np.savez(handle, **arrays))  # never a shard that looks complete

    @classmethod
    def load(cls, path: Path) -> TargetSet:
        with np.load(path) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})


def subset(data: TargetSet, rows: list[int]) -> TargetSet:
    """Sequences `rows` of `data`, in that order."""
    starts = data.target_starts
    return TargetSet.from_sequences(
        [data.sequence(i)[: data.prompt_lens[i]].tolist() for i in rows],
        [data.completion(i).tolist() for i in rows],
        np.concatenate([data.topk_ids[starts[i] : starts[i + 1]] for i in rows]),
        np.concatenate([data.topk_logprobs[starts[i] : starts[i + 1]] for i in rows]),
        np.concatenate([data.tail[starts[i] : starts[i + 1]] for i in rows]),
    )


def corrupted(data: TargetSet) -> TargetSet:
    """Every position's target becomes the previous completion token at full confidence: a student
    trained on it learns to repeat itself (rehearsal of a bad candidate)."""
    starts = data.target_starts
    ids = data.topk_ids.copy()
    for i in range(len(data)):
        completion = data.completion(i)
        ids[starts[i] : starts[i + 1], 0] = np.concatenate([completion[:1], completion[:-1]])
    logprobs = np.full_like(data.topk_logprobs, -30.0)
    logprobs[:, 0] = 0.0
    return replace(data, topk_ids=ids, topk_logprobs=logprobs, tail=np.zeros_like(data.tail))


def chat_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    ids = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    found = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return sorted(int(i) for i in found)


@torch.inference_mode()
def teacher_targets(
    teacher: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    bf16: bool,
    bar: tqdm | None = None,
) -> TargetSet:
    """Greedy teacher completions of `prompts` (EOS kept, nothing after it) and top-k targets on them."""
    encoded = [chat_ids(tokenizer, p) for p in prompts]
    stop = eos_ids(teacher, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    order = np.argsort([len(e) for e in encoded], kind="stable")  # similar lengths share a batch
    results: dict[int, tuple[list[int], np.ndarray, np.ndarray, np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, P) left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, i in enumerate(rows):
            input_ids[b, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[b, width - len(encoded[i]) :] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = teacher.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=pad,
                eos_token_id=stop,
            )
        steps = [topk_targets(step.float(), k, temperature) for step in out.logits]  # each (B, k),(B, k),(B,)
        ids = torch.stack([s[0] for s in steps], 1)  # (B, N, k)
        logprobs = torch.stack([s[1] for s in steps], 1)  # (B, N, k)
        tail = torch.stack([s[2] for s in steps], 1)  # (B, N)
        new = out.sequences[:, width:]  # (B, N)
        for b, i in enumerate(rows):
            tokens = new[b].tolist()
            ends = [j for j, t in enumerate(tokens) if t in stop]
            n = ends[0] + 1 if ends else len(tokens)
            results[int(i)] = (tokens[:n], ids[b, :n].numpy(), logprobs[b, :n].numpy(), tail[b, :n].numpy())
        if bar is not None:
            bar.update(len(rows))
    ordered = [results[i] for i in range(len(prompts))]
    return TargetSet.from_sequences(
        encoded,
        [r[0] for r in ordered],
        np.concatenate([r[1] for r in ordered]),
        np.concatenate([r[2] for r in ordered]),
        np.concatenate([r[3] for r in ordered]),
    )


def fingerprint(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_targets(
    cache_root: Path,
    teacher_ref: str,
    key: dict[str, Any],
    prompts: Sequence[Prompt],
    shard_size: int,
    compute: Callable[[Sequence[Prompt], tqdm], TargetSet],
    desc: str,
) -> TargetSet:
    """Targets for `prompts`, shard by shard: loaded when `<cache_root>/<teacher>/<fp>/shard-i.npz`
    exists, computed (and saved) otherwise. `key` must hold everything that changes the targets."""
    folder = cache_root / teacher_ref / fingerprint({**key, "shard_size": shard_size})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").write_text(json.dumps({**key, "shard_size": shard_size}, indent=2, sort_keys=True))
    shards = [prompts[i : i + shard_size] for i in range(0, len(prompts), shard_size)]
    paths = [folder / f"shard-{i:05d}-{len(s)}.npz" for i, s in enumerate(shards)]
    missing = sum(len(s) for s, p in zip(shards, paths, strict=True) if not p.exists())
    parts = []
    with ProgressBar(
        total=missing, desc=desc, unit="prompt", dynamic_ncols=True, disable=missing == 0
    ) as bar:
        for shard, path in zip(shards, paths, strict=True):
            if not path.exists():
                compute(shard, bar).save(path)
            parts.append(TargetSet.load(path))
    return TargetSet.concat(parts)
