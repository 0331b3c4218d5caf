"""Unit tests of the pure data helpers: corpora.split_indices, the trainer's schedule and batching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.corpora import LabelledTexts, split_indices
from distill.trainer import length_bucketed_batches, lr_factor

FRACTIONS = (0.8, 0.1, 0.1)


@st.composite
def fraction_triples(draw: st.DrawFn) -> tuple[float, float, float]:
    a = draw(st.integers(1, 98))
    b = draw(st.integers(1, 99 - a))
    return (a / 100, b / 100, 1 - a / 100 - b / 100)


# --- split_indices -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1), fractions=fraction_triples())
def test_same_inputs_same_split(n: int, seed: int, fractions: tuple[float, float, float]) -> None:
    first = split_indices(n, seed, fractions)
    second = split_indices(n, seed, fractions)
    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1), fractions=fraction_triples())
def test_parts_are_disjoint_and_cover_range_n(
    n: int, seed: int, fractions: tuple[float, float, float]
) -> None:
    parts = split_indices(n, seed, fractions)
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert sorted(joined.tolist()) == list(range(n))  # covers everything, each index once: disjoint


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1), fractions=fraction_triples())
def test_sizes_match_the_fractions(n: int, seed: int, fractions: tuple[float, float, float]) -> None:
    train, val, test = split_indices(n, seed, fractions)
    # train and val are rounded (±0.5); test takes the remainder, so it carries both errors (±1).
    assert abs(len(train) - n * fractions[0]) <= 0.5 + 1e-9
    assert abs(len(val) - n * fractions[1]) <= 0.5 + 1e-9
    assert abs(len(test) - n * fractions[2]) <= 1.0 + 1e-9


def test_sizes_of_a_common_split() -> None:
    train, val, test = split_indices(1000, 0, FRACTIONS)
    assert (len(train), len(val), len(test)) == (800, 100, 100)


def test_a_different_seed_gives_a_different_split() -> None:
    a = split_indices(1000, 0, FRACTIONS)
    b = split_indices(1000, 1, FRACTIONS)
    assert not np.array_equal(a[0], b[0])
    assert set(a[2].tolist()) != set(b[2].tolist())


def test_the_split_is_a_shuffle_not_a_cut_of_the_input_order() -> None:
    train, _, _ = split_indices(1000, 0, FRACTIONS)
    assert not np.array_equal(np.sort(train), np.arange(800))


@pytest.mark.parametrize(
    "fractions",
    [(0.8, 0.1, 0.2), (0.5, 0.3, 0.1), (1.0, 0.0, 0.0), (0.9, 0.2, -0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)],
)
def test_bad_fractions_raise(fractions: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_indices(100, 0, fractions)


def test_labelled_texts_take_follows_the_indices() -> None:
    data = LabelledTexts("toy", ["a", "b", "c", "d"], [0, 1, 0, 1], ["x", "y"])
    part = data.take(np.array([3, 0]))
    assert (part.texts, part.labels, part.label_names) == (["d", "a"], [1, 0], ["x", "y"])
    assert part.fingerprint() != data.fingerprint()
    assert part.fingerprint() == LabelledTexts("other", ["d", "a"], [0, 0], []).fingerprint()  # texts only


# --- lr_factor -----------------------------------------------------------------------------------------


def test_lr_factor_warms_up_to_one_then_decays_to_zero() -> None:
    total, warmup = 100, 10
    factors = [lr_factor(step, total, warmup) for step in range(total + 1)]
    assert factors[0] == pytest.approx(1 / warmup)
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[total] == 0.0
    assert max(factors) == pytest.approx(1.0)
    rising, falling = factors[:warmup], factors[warmup - 1 :]
    assert all(a < b for a, b in itertools.pairwise(rising))
    assert all(a >= b for a, b in itertools.pairwise(falling))


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 10_000), data=st.data())
def test_lr_factor_is_in_zero_one_and_never_negative(total: int, data: st.DataObject) -> None:
    warmup = data.draw(st.integers(0, total))
    step = data.draw(st.integers(0, 3 * total))  # past the end too
    factor = lr_factor(step, total, warmup)
    assert 0.0 <= factor <= 1.0
    if step >= total:
        assert factor == 0.0


def test_lr_factor_without_warmup_starts_at_one() -> None:
    assert lr_factor(0, 50, 0) == 1.0
    assert lr_factor(25, 50, 0) == pytest.approx(0.5)


def test_lr_factor_of_an_empty_run_is_zero() -> None:
    assert lr_factor(0, 0, 0) == 0.0


# --- length_bucketed_batches ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 200), max_size=600),
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
    bucket_batches=st.integers(1, 8),
)
def test_batches_cover_every_index_exactly_once(
    lengths: list[int], batch_size: int, seed: int, bucket_batches: int
) -> None:
    batches = length_bucketed_batches(lengths, batch_size, seed, bucket_batches)
    assert all(1 <= len(b) <= batch_size for b in batches)
    joined = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert sorted(joined.tolist()) == list(range(len(lengths)))


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), max_size=300), seed=st.integers(0, 2**32 - 1))
def test_batches_are_deterministic_per_seed(lengths: list[int], seed: int) -> None:
    a = length_bucketed_batches(lengths, 8, seed, bucket_batches=4)
    b = length_bucketed_batches(lengths, 8, seed, bucket_batches=4)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_different_seeds_give_different_batches() -> None:
    lengths = list(np.random.default_rng(0).integers(1, 100, 500))
    a = length_bucketed_batches(lengths, 16, 0)
    b = length_bucketed_batches(lengths, 16, 1)
    assert [x.tolist() for x in a] != [x.tolist() for x in b]


def test_batches_group_similar_lengths() -> None:
    # One window holds everything: each batch is a run of the sorted lengths, so its spread is small.
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 1000, 256).tolist()
    batches = length_bucketed_batches(lengths, 16, seed=0, bucket_batches=16)
    arr = np.asarray(lengths)
    spreads = [int(arr[b].max() - arr[b].min()) for b in batches]
    assert max(spreads) < 250  # a random batch of 16 over 1..1000 spans ~900
    starts = sorted(int(arr[b].min()) for b in batches)
    assert starts != [int(arr[b].min()) for b in batches]  # the batches themselves are shuffled
