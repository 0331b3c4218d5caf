"""Which model serves a request: a pure function of the task's weights and the routing key.

Weighted rendezvous hashing: every model scores `-w / ln(u)` with `u` a stable hash of (model, key) in
(0, 1), and the highest score wins. A model is picked with probability exactly w / Σw; a key stays on
its model while the weights hold; when one model's weight rises and no other's does, no key leaves
it, and keys move only where weights changed (plain cumulative intervals reshuffle unrelated keys).

>>> pick_model({"classify-teacher@1": 75, "classify-student@1": 25}, "user-42")
'classify-teacher@1'
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping

_TWO_52 = float(2**52)

Digest = Callable[[bytes], bytes]
"""A hash of bytes to 8 bytes, uniform over its range."""


def blake2b_64(data: bytes) -> bytes:
    """The routing digest: 64-bit BLAKE2b, stable across processes and machines (unlike `hash`)."""
    return hashlib.blake2b(data, digest_size=8).digest()


def unit_hash(model: str, key: str, digest: Digest = blake2b_64) -> float:
    """A stable uniform number in (0, 1) for (model, key); inside the interval for every digest."""
    digest_bytes = digest(f"{model}\0{key}".encode())
    # 52 bits + 0.5: the largest value, 1 - 2^-53, is still a double below 1 (53 bits would round to 1.0).
    return ((int.from_bytes(digest_bytes, "big") >> 12) + 0.5) / _TWO_52


def pick_model(weights: Mapping[str, float], key: str, digest: Digest = blake2b_64) -> str:
    """The model for `key` under `weights` (non-negative, at least one positive); `digest` hashes
    (model, key) for `unit_hash`."""
    best: str | None = None
    best_score = -math.inf
    for model in sorted(weights):  # sorted: ties (practically impossible) break the same way everywhere
        weight = weights[model]
        if weight <= 0:
            continue
        score = -weight / math.log(unit_hash(model, key, digest))
        if score > best_score:
            best, best_score = model, score
    if best is None:
        raise ValueError("no model has a positive weight")
    return best
