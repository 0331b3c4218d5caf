"""Pure pieces of /generate: token choice, stop strings, degeneracy, top-k KL, the degeneracy guard."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from distill.generate.degeneracy import distinct_n, is_degenerate, repeated_ngram_share
from distill.generate.topk import topk_kl, topk_targets
from gateway.serving.sampling import pick_token, stop_scan
from gateway.shadow.generate import accepted_prefix
from rollout.judge import judge
from rollout.model import Observation, Phase, RolloutConfig, RolloutState
from rollout.prometheus import PrometheusSource


def test_greedy_and_a_tiny_nucleus_pick_the_argmax() -> None:
    logits = torch.tensor([0.5, 3.0, 2.9, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert pick_token(logits, 0.0, 1.0, gen) == 1
    assert all(pick_token(logits, 1.0, 1e-6, gen) == 1 for _ in range(20))


def test_sampling_follows_the_seed_and_stays_in_the_nucleus() -> None:
    logits = torch.tensor([2.0, 1.9, 1.8, -5.0, -5.0])
    draws = [pick_token(logits, 1.0, 0.9, torch.Generator().manual_seed(s)) for s in range(200)]
    assert set(draws) <= {0, 1, 2} and len(set(draws)) > 1
    again = [pick_token(logits, 1.0, 0.9, torch.Generator().manual_seed(s)) for s in range(200)]
    assert draws == again


alphabet = st.text(alphabet="ab c", max_size=30)


@given(alphabet, st.lists(st.text(alphabet="ab c", min_size=1, max_size=4), max_size=3))
def test_stop_scan_never_shows_a_stop_string_or_its_start(text: str, stops: list[str]) -> None:
    visible, stopped = stop_scan(text, stops)
    shown = text[:visible]
    assert not any(s in shown for s in stops)
    if stopped:
        assert any(text[visible:].startswith(s) for s in stops)
    else:
        held = text[visible:]
        assert held == "" or any(s.startswith(held) for s in stops)


def test_degeneracy_flags_loops_not_ordinary_text() -> None:
    loop = [5, 6, 7] * 10
    assert is_degenerate(loop) and repeated_ngram_share(loop) > 0.8 and distinct_n(loop) < 0.2
    varied = list(range(40))
    assert not is_degenerate(varied) and repeated_ngram_share(varied) == 0 and distinct_n(varied) == 1
    assert not is_degenerate([1, 1, 1])  # too short to judge


def test_accepted_prefix_counts_until_the_first_disagreement() -> None:
    assert accepted_prefix(np.array([True, True, False, True])) == 2
    assert accepted_prefix(np.array([True, True])) == 2
    assert accepted_prefix(np.array([False])) == 0


@given(st.integers(0, 2**16))
def test_topk_kl_is_zero_for_the_same_model_and_positive_otherwise(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(3, 50, generator=gen)
    ids, logprobs, tail = topk_targets(teacher, k=5)
    assert torch.allclose(topk_kl(ids, logprobs, tail, teacher), torch.zeros(3), atol=1e-5)
    other = torch.randn(3, 50, generator=gen)
    assert bool((topk_kl(ids, logprobs, tail, other) >= 0).all())


def test_degeneracy_guard_fails_a_looping_candidate_and_passes_a_clean_one() -> None:
    config = RolloutConfig(max_disagreement=0.9, max_degenerate_rate=0.1, min_requests=20)
    looping = Observation(compared=2000, disagreed=200, completions=60, degenerate=45, requests=60)
    clean = Observation(compared=2000, disagreed=200, completions=150, degenerate=0, requests=150)
    verdicts = {e.metric: e.verdict.value for e in judge(looping, config)}
    assert verdicts["degenerate"] == "fail" and verdicts["disagreement"] == "pass"
    assert {e.metric: e.verdict.value for e in judge(clean, config)}["degenerate"] == "pass"
    assert "degenerate" not in {e.metric for e in judge(looping, RolloutConfig(max_disagreement=0.9))}


def test_prometheus_source_judges_generate_on_time_per_token_and_degeneracy() -> None:
    source = PrometheusSource("http://127.0.0.1:9")  # queries() builds PromQL only; nothing is sent
    generate = RolloutState(Phase.PROGRESSING, "generate", "t@1", "s@2", 0, 5, 0.0)
    queries = source.queries(generate, 60)
    assert "kdgate_time_per_output_token_seconds_bucket" in queries["p99_ms"]
    assert "kdgate_shadow_degenerate_total" in queries["degenerate"]
    assert "kdgate_shadow_completions_total" in queries["completions"]
    classify = source.queries(RolloutState(Phase.PROGRESSING, "classify", "t@1", "s@2", 0, 5, 0.0), 60)
    assert "kdgate_request_seconds_bucket" in classify["p99_ms"] and "degenerate" not in classify
    source.close()
