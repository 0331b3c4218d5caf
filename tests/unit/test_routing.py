"""Unit tests of gateway.serving.routing.pick_model (weighted rendezvous hashing), with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.serving.routing
from gateway.serving.routing import pick_model

MODELS = ("classify-teacher@1", "classify-student@1", "classify-student@2", "classify-student@3")


@st.composite
def splits(draw: st.DrawFn, min_models: int = 2, max_models: int = 4) -> dict[str, int]:
    """Integer weights over 2–4 models summing to 100 (zeros allowed, as the admin API allows them)."""
    k = draw(st.integers(min_models, max_models))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=k - 1, max_size=k - 1)))
    bounds = [0, *cuts, 100]
    return {MODELS[i]: bounds[i + 1] - bounds[i] for i in range(k)}


def keys(salt: int, n: int) -> list[str]:
    return [f"user-{salt}-{i}" for i in range(n)]


# --- (a) shares converge to the weights ---------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(weights=splits(), salt=st.integers(0, 10**6))
def test_shares_converge_to_the_weights(weights: dict[str, int], salt: int) -> None:
    n = 4000
    counts = dict.fromkeys(weights, 0)
    for key in keys(salt, n):
        counts[pick_model(weights, key)] += 1
    for model, weight in weights.items():
        # ±3.5 points is > 4 standard deviations at the worst case (p = 0.5, n = 4000: σ ≈ 0.8 points).
        assert abs(100 * counts[model] / n - weight) <= 3.5, (model, counts, weights)


# --- (b) stickiness -------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(weights=splits(), key=st.text(max_size=40))
def test_same_key_same_weights_same_model(weights: dict[str, int], key: str) -> None:
    assert pick_model(weights, key) == pick_model(dict(weights), key)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), weights=splits(), key=st.text(max_size=40))
def test_independent_of_insertion_order(data: st.DataObject, weights: dict[str, int], key: str) -> None:
    order = data.draw(st.permutations(list(weights)))
    reordered = {model: weights[model] for model in order}
    assert list(reordered) == order
    assert pick_model(reordered, key) == pick_model(weights, key)


def test_float_and_int_weights_route_alike() -> None:
    ints = {"a@1": 30, "b@1": 70}
    floats = {"a@1": 30.0, "b@1": 70.0}
    assert all(pick_model(ints, k) == pick_model(floats, k) for k in keys(7, 500))


def test_scaling_all_weights_changes_nothing() -> None:
    # Only the ratios matter: a split over 100 and the same split over 1 route identically.
    weights = {"a@1": 20, "b@1": 50, "c@1": 30}
    scaled = {m: w / 100 for m, w in weights.items()}
    assert all(pick_model(weights, k) == pick_model(scaled, k) for k in keys(8, 500))


# --- (c) raising one weight never moves a key away from that model --------------------------------------


@st.composite
def raise_one(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, int], str]:
    """(old, new, target): target's weight rises or stays; every other weight falls or stays."""
    old = draw(splits())  # sums to 100: at least one positive weight
    target = draw(st.sampled_from(sorted(old)))
    new = {m: (w - draw(st.integers(0, w))) for m, w in old.items() if m != target}
    new[target] = old[target] + draw(st.integers(0 if old[target] > 0 else 1, 100))
    return old, new, target


@settings(max_examples=60, deadline=None)
@given(case=raise_one(), salt=st.integers(0, 10**6))
def test_raising_one_weight_never_moves_keys_away_from_it(
    case: tuple[dict[str, int], dict[str, int], str], salt: int
) -> None:
    old, new, target = case
    for key in keys(salt, 400):
        before, after = pick_model(old, key), pick_model(new, key)
        if before == target:
            assert after == target, (key, old, new)
        if before != after:
            # A key only leaves a model whose weight fell, or leaves for the raised one.
            assert after == target or new[before] < old[before], (key, before, after, old, new)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), old=splits(), salt=st.integers(0, 10**6), share=st.integers(1, 100))
def test_proportional_decrease_moves_keys_only_to_the_raised_model(
    data: st.DataObject, old: dict[str, int], salt: int, share: int
) -> None:
    # When the others all shrink by the same factor (their ratios hold), keys only move *to* the target.
    target = data.draw(st.sampled_from(sorted(old)))
    new = {m: (w if m == target else w * share / 100) for m, w in old.items()}
    new[target] = old[target] + 1
    for key in keys(salt, 400):
        before, after = pick_model(old, key), pick_model(new, key)
        assert before == after or after == target, (key, before, after, old, new)


@settings(max_examples=40, deadline=None)
@given(weights=splits(min_models=3), salt=st.integers(0, 10**6))
def test_weight_zero_is_never_picked(weights: dict[str, int], salt: int) -> None:
    zero = {m for m, w in weights.items() if w == 0}
    for key in keys(salt, 300):
        assert pick_model(weights, key) not in zero


def test_weight_zero_is_never_picked_even_beside_a_tiny_weight() -> None:
    weights = {"a@1": 0, "b@1": 1e-9, "c@1": 0}
    assert {pick_model(weights, k) for k in keys(1, 300)} == {"b@1"}


@pytest.mark.parametrize("weights", [{}, {"a@1": 0}, {"a@1": 0, "b@1": 0.0}])
def test_no_positive_weight_raises(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive weight"):
        pick_model(weights, "user-1")


# --- the hash's range ----------------------------------------------------------------------------------


def test_largest_and_smallest_digests_still_route() -> None:
    def largest(data: bytes) -> bytes:
        return b"\xff" * 8

    def smallest(data: bytes) -> bytes:
        return b"\x00" * 8

    assert pick_model({"a@1": 1}, "k", digest=largest) == "a@1"
    assert pick_model({"a@1": 1}, "k", digest=smallest) == "a@1"
    assert 0.0 < gateway.serving.routing.unit_hash("a@1", "k", smallest) < 0.5
    assert 0.5 < gateway.serving.routing.unit_hash("a@1", "k", largest) < 1.0


def test_unit_hash_is_stable_inside_the_unit_interval_and_roughly_uniform() -> None:
    us = [gateway.serving.routing.unit_hash("a@1", key) for key in keys(3, 4000)]
    assert us == [gateway.serving.routing.unit_hash("a@1", key) for key in keys(3, 4000)]
    assert all(0.0 < u < 1.0 for u in us)
    assert abs(sum(us) / len(us) - 0.5) < 0.02  # σ of the mean ≈ 0.0046
    assert gateway.serving.routing.unit_hash("a@1", "k") != gateway.serving.routing.unit_hash("b@1", "k")
