"""Degeneracy of generated text, measured on token ids (pure).

On-policy agreement can be gamed: a student stuck in a repetition loop agrees well with a teacher
that copies the loop. These measures catch that case and serve as a rollout guard.

>>> repeated_ngram_share([1, 2, 1, 2, 1, 2], n=2)
0.6
"""

from __future__ import annotations

from collections import Counter

MIN_TOKENS = 8  # shorter completions are too short to judge
DEGENERATE_REPEAT_SHARE = 0.5  # more than half of the 3-grams are repeats of earlier ones → degenerate


def distinct_n(ids: list[int], n: int = 2) -> float:
    """Distinct n-grams / all n-grams (1.0 when there are none)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_share(ids: list[int], n: int = 3) -> float:
    """Share of n-grams that already occurred earlier in the same completion."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def is_degenerate(ids: list[int]) -> bool:
    return len(ids) >= MIN_TOKENS and repeated_ngram_share(ids, 3) > DEGENERATE_REPEAT_SHARE
