"""The model pool keeps what it loads out of the garbage collector's passes (`settle_heap`): a full pass
over a torch teacher's objects stopped the whole gateway for a quarter of a second, once every few
seconds under load (loadtests/bench_workers.py measures the p99 it cost)."""

from __future__ import annotations

import gc
from pathlib import Path

from distill.registry import Registry
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.pool import ModelPool
from gateway.settings import Settings
from tests.support import TEACHER


def test_loaded_models_are_moved_out_of_the_collected_generations(state_dir: Path) -> None:
    pool = ModelPool(Registry(state_dir), Settings(state_dir=state_dir), GatewayMetrics())
    pool.load_all()
    teacher = pool.models[TEACHER].runner
    assert gc.is_tracked(teacher)
    collected = gc.get_objects(0) + gc.get_objects(1) + gc.get_objects(2)  # all but the permanent one
    assert not any(obj is teacher for obj in collected)
