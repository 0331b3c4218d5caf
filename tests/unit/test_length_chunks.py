"""Unit tests of distill.classify.runner.length_chunks: how a batch of texts is cut into model calls."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from distill.classify.runner import length_chunks


@given(st.lists(st.integers(min_value=1, max_value=512), max_size=80), st.integers(min_value=1, max_value=16))
def test_every_text_runs_once_in_a_call_of_at_most_size_that_pads_it_by_at_most_the_slack(
    lengths: list[int], size: int
) -> None:
    chunks = length_chunks(lengths, size, slack=0.1)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        assert 1 <= len(chunk) <= size
        shortest, longest = min(lengths[i] for i in chunk), max(lengths[i] for i in chunk)
        assert longest <= shortest * 1.1
    flat = [lengths[i] for chunk in chunks for i in chunk]
    assert flat == sorted(flat)  # a call's texts are neighbours in length


def test_texts_of_one_length_fill_calls_up_to_size() -> None:
    assert length_chunks([32] * 10, size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_longer_text_opens_a_new_call_rather_than_pad_the_others() -> None:
    assert length_chunks([10, 10, 20, 10], size=8) == [[0, 1, 3], [2]]
