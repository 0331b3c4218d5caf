"""Models that behave like broken ones: real code, used for rollout rehearsals and fault tests.

A `kind="fault"` manifest wraps another registered model and adds latency, raised errors on a share of
batches, or wrong answers (a fixed label permutation) on a share of inputs. Which inputs get wrong
answers depends only on the input, so the same input is wrong every time — as with a real bad model.
The wrappers live with their task (`distill/classify/faults.py`, `distill/generate/faults.py`).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable

from distill.registry import FaultSpec, Lineage, Manifest, Registry


class InjectedFault(RuntimeError):
    """Raised by a fault model on purpose."""


def default_permutation(num_labels: int) -> list[int]:
    return [(i + 1) % num_labels for i in range(num_labels)]


def is_wrong_input(text: str, rate: float, seed: int) -> bool:
    """Deterministic per text: the same share of inputs, the same inputs every call."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < rate


class FaultDice:
    """The faults both tasks' wrappers share: the added latency, the seeded draw of a failing call, and
    the deterministic choice of inputs that get a wrong answer."""

    def __init__(self, ref: str, spec: FaultSpec, sleep: Callable[[float], None] = time.sleep) -> None:
        self.ref = ref
        self.spec = spec
        self._sleep = sleep
        self._rng = random.Random(spec.seed)
        self._lock = threading.Lock()

    def delay(self) -> None:
        if self.spec.latency_ms:
            self._sleep(self.spec.latency_ms / 1000.0)

    def maybe_fail(self) -> None:
        """Raises `InjectedFault` on a share `error_rate` of calls."""
        with self._lock:  # one seeded stream shared by all callers: reproducible for a given call order
            fail = self._rng.random() < self.spec.error_rate
        if fail:
            raise InjectedFault(f"{self.ref}: injected failure")

    def is_wrong(self, key: str) -> bool:
        return is_wrong_input(key, self.spec.wrong_rate, self.spec.seed)


def register_fault_model(registry: Registry, spec: FaultSpec, name: str | None = None) -> Manifest:
    """Registers a model that wraps `spec.wraps` with the given faults, e.g. for a rollback rehearsal."""
    inner = registry.get(spec.wraps)
    name = name or f"{inner.name}-faulty"
    with registry.stage(name) as staging:
        manifest = Manifest(
            name=name,
            version=registry.next_version(name),
            task=inner.task,
            task_kind=inner.task_kind,
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
            calibration=inner.calibration,
        )
        return staging.commit(manifest)
