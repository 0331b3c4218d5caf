"""A classify model that behaves like a broken one (real code, for rollout rehearsals and fault tests):
per its `FaultSpec` it adds latency, raises on a share of batches, and answers a fixed share of texts
with a label permutation (the same texts every time)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from distill.faults import FaultDice, default_permutation
from distill.registry import FaultSpec, Manifest

if TYPE_CHECKING:
    from distill.classify.runner import Runner


class FaultyRunner:
    def __init__(
        self,
        manifest: Manifest,
        inner: Runner,
        spec: FaultSpec,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.manifest = manifest
        self.inner = inner
        self.spec = spec
        self.dice = FaultDice(manifest.ref, spec, sleep)
        num_labels = len(manifest.labels)
        self.permutation = spec.permutation or default_permutation(num_labels)
        if sorted(self.permutation) != list(range(num_labels)):
            raise ValueError(f"permutation {self.permutation} is not a permutation of {num_labels} labels")

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        self.dice.delay()
        self.dice.maybe_fail()
        logits = self.inner.predict_logits(texts)  # (B, C)
        permuted = np.empty_like(logits)
        permuted[:, self.permutation] = logits  # label i's score moves to permutation[i]
        wrong = np.array([self.dice.is_wrong(t) for t in texts], dtype=bool)
        return np.where(wrong[:, None], permuted, logits)

    def predict_batch(self, texts: list[str]) -> np.ndarray:
        from distill.classify.runner import probabilities  # the runner module loads this one

        return probabilities(self.manifest, self.predict_logits(texts))
