"""The /generate student's pieces on tiny random Llamas: KL, targets, batches, schedule, the KD loop, the
gate's loop probe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.generate.data import Prompt, in_heldout, prompt_texts, seed_prompts
from distill.generate.degeneracy import is_degenerate
from distill.generate.kd import degenerate_rate, evaluate, kd_loss, lr_factor, make_batch, train_kd
from distill.generate.targets import TargetSet, teacher_targets
from distill.generate.topk import topk_kl, topk_targets
from tests.support import EOS, PAD, CharTokenizer, K, V, random_targets, tiny_llama


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 4.0))
def test_topk_kl_is_zero_on_identical_and_never_negative(seed: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(6, V, generator=gen) * 3  # (N, V)
    student = torch.randn(6, V, generator=gen) * 3
    ids, logprobs, tail = topk_targets(teacher, K, temperature)
    same = topk_kl(ids, logprobs, tail, teacher, temperature)  # (N,)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-5)
    assert (topk_kl(ids, logprobs, tail, student, temperature) >= 0).all()


def test_generation_logits_are_teacher_forced_logits_and_completions_stop_at_eos() -> None:
    teacher = tiny_llama(0)
    prompts = [Prompt("tweet", t, t) for t in ("hi", "a longer prompt here", "mid size")]
    data = teacher_targets(
        teacher, CharTokenizer(), prompts, k=K, temperature=1.0, max_new_tokens=6, batch_size=3, bf16=False
    )
    assert len(data) == 3
    for i in range(3):
        seq, n_prompt = torch.from_numpy(data.sequence(i).astype(np.int64)), int(data.prompt_lens[i])
        completion = data.completion(i).tolist()
        assert 1 <= len(completion) <= 6 and EOS not in completion[:-1]
        with torch.no_grad():
            forced = teacher(input_ids=seq[None]).logits[0, n_prompt - 1 : -1]  # (c, V)
        ids, logprobs, tail = topk_targets(forced, K)
        rows = slice(data.target_starts[i], data.target_starts[i + 1])
        assert (ids.numpy() == data.topk_ids[rows]).all()
        np.testing.assert_allclose(logprobs.numpy(), data.topk_logprobs[rows], atol=1e-4)
        np.testing.assert_allclose(tail.numpy(), data.tail[rows], atol=1e-4)
        assert completion == data.topk_ids[rows, 0].tolist()  # greedy: the completion is the argmax


def test_target_sets_round_trip_and_concatenate(tmp_path: Path) -> None:
    a, b = random_targets(1, 4), random_targets(2, 5)
    both = TargetSet.concat([a, b])
    assert len(both) == 9 and (both.sequence(6) == b.sequence(2)).all()
    assert (both.topk_ids[both.target_starts[4] :] == b.topk_ids).all()
    both.save(tmp_path / "s.npz")
    again = TargetSet.load(tmp_path / "s.npz")
    assert all((getattr(again, f) == getattr(both, f)).all() for f in ("tokens", "seq_starts", "tail"))


def test_batches_score_exactly_the_completion_tokens_against_the_teachers_argmax() -> None:
    data = random_targets(3)
    batch = make_batch(data, [0, 5, 7], PAD)
    assert batch.loss_mask.sum() == len(batch.targets) == len(batch.topk_ids)
    shifted = batch.input_ids[:, 1:][batch.loss_mask[:, :-1]]  # token after every scored position
    expected = np.concatenate([data.completion(i) for i in (0, 5, 7)])
    assert (shifted.numpy() == expected).all()
    # The hard target is the teacher's argmax, not the token that was served (a student's, in shadow data).
    assert (batch.targets == batch.topk_ids[:, 0]).all()
    assert not (batch.targets.numpy() == expected).all()


def test_kd_loss_mixes_soft_and_hard_terms() -> None:
    data = random_targets(4)
    batch = make_batch(data, range(len(data)), PAD)
    logits = torch.randn(len(batch.targets), V)
    soft = kd_loss(logits, batch, 2.0, 1.0)
    hard = kd_loss(logits, batch, 2.0, 0.0)
    assert torch.isclose(kd_loss(logits, batch, 2.0, 0.3), 0.3 * soft + 0.7 * hard, atol=1e-5)
    assert torch.isclose(hard, torch.nn.functional.cross_entropy(logits, batch.targets))


def test_kd_loop_lowers_the_kl_on_a_tiny_overfit() -> None:
    torch.set_num_threads(1)
    data = random_targets(5, sharpness=20.0)  # a confident teacher: the KL starts well above zero
    student = tiny_llama(7)
    before = evaluate(student, data, PAD)
    summary = train_kd(
        student,
        data,
        seconds=60,
        max_steps=80,
        batch_size=4,
        lr=3e-3,
        temperature=1.0,
        alpha=1.0,
        seed=0,
        pad_id=PAD,
        bf16=False,
        freeze_embeddings=False,
    )
    after = evaluate(student, data, PAD)
    assert summary["steps"] == 80
    assert after["kl"] < 0.5 * before["kl"]
    assert after["agreement"] > before["agreement"]


class Killed(Exception):
    """Stands in for a kill -9 between two steps."""


def test_a_step_bound_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = random_targets(6, n=20)  # 5 batches per epoch: 12 steps cross two epoch boundaries
    args = dict(seconds=600, max_steps=12, batch_size=4, lr=3e-3, temperature=1.0, alpha=0.5)
    args |= dict(seed=3, pad_id=PAD, bf16=False, freeze_embeddings=True)
    reference = tiny_llama(8)
    train_kd(reference, data, **args)

    def dies_after_step_7(step: int) -> None:
        if step == 7:
            raise Killed

    args |= dict(checkpoint=tmp_path / "run.pt", checkpoint_every=3)
    with pytest.raises(Killed):
        train_kd(tiny_llama(8), data, **args, on_step=dies_after_step_7)

    resumed = tiny_llama(8)  # the parent again, as a rerun loads it
    summary = train_kd(resumed, data, **args)
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 12
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_plan_is_ignored(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = random_targets(6, n=20)
    args = dict(seconds=600, batch_size=4, lr=3e-3, temperature=1.0, alpha=0.5, seed=3, pad_id=PAD)
    args |= dict(bf16=False, checkpoint=tmp_path / "run.pt", checkpoint_every=2)
    train_kd(tiny_llama(8), data, max_steps=4, **args)
    summary = train_kd(tiny_llama(8), data, max_steps=6, **args)  # another plan: starts from step 0
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 6


@given(st.floats(0, 1), st.floats(0, 1))
def test_lr_schedule_is_a_pure_bounded_function(a: float, b: float) -> None:
    assert lr_factor(a) == lr_factor(a)
    assert 0.1 - 1e-9 <= lr_factor(a) <= 1.0 + 1e-9
    lo, hi = sorted((a, b))
    if lo >= 0.05:  # after warm-up: never increases
        assert lr_factor(hi) <= lr_factor(lo) + 1e-12


def test_lr_schedule_shape() -> None:
    assert lr_factor(0.0) == pytest.approx(0.1) and lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(0.1) and lr_factor(2.0) == pytest.approx(0.1)
    assert math.isclose(lr_factor(0.525), 0.55)


def test_seed_prompts_are_deterministic_disjoint_and_prefix_stable() -> None:
    train, held = seed_prompts("train", 300, seed=0), seed_prompts("heldout", 60, seed=0)
    assert train == seed_prompts("train", 300, seed=0)
    assert seed_prompts("train", 120, seed=0) == train[:120]
    assert not prompt_texts(train) & prompt_texts(held)
    assert all(in_heldout(p.text, 0) for p in held) and not any(in_heldout(p.text, 0) for p in train)
    assert {p.source for p in train} == {"paragraph", "tweet", "headline"}
    assert seed_prompts("train", 50, seed=1) != train[:50]
    with pytest.raises(ValueError):
        seed_prompts("test", 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_batched_loop_probe_counts_what_each_prompt_alone_produces(seed: int) -> None:
    """Prompts of different lengths, left-padded into one batch: the same loops as one prompt at a time
    (untied random Llamas loop on some prompts, not all, so the rate says something)."""
    model = tiny_llama(seed, tied=False)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, V, rng.integers(1, 12)).tolist() for _ in range(8)]
    alone = []
    with torch.inference_mode():
        for p in prompts:
            out = model.generate(
                torch.tensor([p]), max_new_tokens=24, do_sample=False, eos_token_id=EOS, pad_token_id=EOS
            )
            alone.append(is_degenerate(out[0, len(p) :].tolist()))
    assert 0 < sum(alone) < len(prompts)
    assert degenerate_rate(model, prompts, 24, EOS) == sum(alone) / len(prompts)
