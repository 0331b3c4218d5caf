"""The loaded models: one runner and one micro-batcher per registered /classify model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from distill.registry import Manifest, Registry
from distill.runners import Runner, load_runner
from gateway.batcher import MicroBatcher
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

log = logging.getLogger("kdgate.pool")

SERVED_TASKS = ("classify",)


@dataclass
class LoadedModel:
    manifest: Manifest
    runner: Runner
    batcher: MicroBatcher

    @property
    def ref(self) -> str:
        return self.manifest.ref


class ModelPool:
    def __init__(self, registry: Registry, settings: Settings, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}

    def load_all(self) -> None:
        """Loads every registered model of a served task not loaded yet (blocking: call it off the loop).

        The new mapping replaces the old in one assignment: request handlers iterating the old one on the
        event loop never see it change size under them.
        """
        added = {}
        for manifest in self.registry.list():
            if manifest.task in SERVED_TASKS and manifest.ref not in self.models:
                added[manifest.ref] = self._load(manifest)
                log.info("loaded %s (%s, %s)", manifest.ref, manifest.role, manifest.format)
        if added:
            self.models = {**self.models, **added}

    def _load(self, manifest: Manifest) -> LoadedModel:
        threads = (
            self.settings.teacher_threads if manifest.role == "teacher" else self.settings.student_threads
        )
        prefer_onnx = self.settings.teacher_runtime == "onnx"
        runner = load_runner(self.registry, manifest.ref, threads=threads, prefer_onnx=prefer_onnx)
        histogram = self.metrics.batch_size.labels(manifest.task, manifest.ref)
        batcher = MicroBatcher(
            runner.predict_logits,
            max_batch=self.settings.max_batch_size,
            max_wait=self.settings.max_wait_ms / 1000.0,
            name=manifest.ref,
            observe=histogram.observe,
        )
        return LoadedModel(manifest, runner, batcher)

    def tasks_of(self) -> dict[str, str]:
        return {ref: m.manifest.task for ref, m in self.models.items()}

    def teacher_of(self, task: str) -> LoadedModel | None:
        """The task's teacher: `settings.teacher[task]` if set (it may be a fault model), else the latest."""
        configured = self.settings.teacher.get(task)
        if configured is not None:
            return self.models.get(configured)
        teachers = [
            m
            for m in self.models.values()
            if m.manifest.task == task and m.manifest.role == "teacher" and m.manifest.kind == "model"
        ]
        return max(teachers, key=lambda m: m.manifest.version) if teachers else None

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.close()
