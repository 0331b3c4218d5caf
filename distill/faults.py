"""A model that behaves like a broken one: real code, used for rollout rehearsals and fault tests.

A `kind="fault"` manifest wraps another registered model and adds latency, raised errors on a share of
batches, or wrong answers (a fixed label permutation) on a share of inputs. Which inputs get wrong
answers depends only on the text, so the same input is wrong every time — as with a real bad model.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from distill.registry import FaultSpec, Lineage, Manifest, Registry

if TYPE_CHECKING:
    from distill.classify.runner import Runner


class InjectedFault(RuntimeError):
    """Raised by a fault model on purpose."""


def default_permutation(num_labels: int) -> list[int]:
    return [(i + 1) % num_labels for i in range(num_labels)]


def is_wrong_input(text: str, rate: float, seed: int) -> bool:
    """Deterministic per text: the same share of inputs, the same inputs every call."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < rate


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
        self._sleep = sleep
        self._rng = random.Random(spec.seed)
        self._lock = threading.Lock()
        num_labels = len(manifest.labels)
        self.permutation = spec.permutation or default_permutation(num_labels)
        if sorted(self.permutation) != list(range(num_labels)):
            raise ValueError(f"permutation {self.permutation} is not a permutation of {num_labels} labels")

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        if self.spec.latency_ms:
            self._sleep(self.spec.latency_ms / 1000.0)
        with self._lock:  # one seeded stream shared by all callers: reproducible for a given call order
            fail = self._rng.random() < self.spec.error_rate
        if fail:
            raise InjectedFault(f"{self.ref}: injected failure")
        logits = self.inner.predict_logits(texts)  # (B, C)
        permuted = np.empty_like(logits)
        permuted[:, self.permutation] = logits  # label i's score moves to permutation[i]
        wrong = np.array([is_wrong_input(t, self.spec.wrong_rate, self.spec.seed) for t in texts], dtype=bool)
        return np.where(wrong[:, None], permuted, logits)

    def predict_batch(self, texts: list[str]) -> np.ndarray:
        from distill.classify.runner import softmax

        return softmax(self.predict_logits(texts))


def register_fault_model(registry: Registry, spec: FaultSpec, name: str | None = None) -> Manifest:
    """Registers a model that wraps `spec.wraps` with the given faults, e.g. for a rollback rehearsal."""
    inner = registry.get(spec.wraps)
    name = name or f"{inner.name}-faulty"
    with registry.stage(name) as staging:
        manifest = Manifest(
            name=name,
            version=registry.next_version(name),
            task=inner.task,
            role=inner.role,
            kind="fault",
            format="fault",
            labels=inner.labels,
            max_length=inner.max_length,
            fault=spec,
            lineage=Lineage(
                teacher=inner.lineage.teacher, parent=inner.ref, recipe={"name": "fault-injection"}
            ),
            metrics=dict(inner.metrics),
        )
        return staging.commit(manifest)
