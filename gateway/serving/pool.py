"""The loaded models: per /classify model a runner and a micro-batcher; per /generate model an LM and
its generation engine."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from distill.classify.runner import Runner, load_runner, probabilities
from distill.registry import Manifest, Registry, RegistryError, Role, TaskKind
from gateway.serving.batcher import BatchFn, MicroBatcher
from gateway.serving.metrics import GatewayMetrics
from gateway.settings import Settings

# torch and the LM code load with the first LM: a gateway of ONNX classifiers starts in about a second
if TYPE_CHECKING:
    from distill.generate.faults import FaultyLM
    from distill.generate.runner import CausalLM
    from gateway.serving.engine import GenerationEngine

log = logging.getLogger("kdgate.pool")

BUNDLED_TASKS = {TaskKind.CLASSIFY.value: TaskKind.CLASSIFY, TaskKind.GENERATE.value: TaskKind.GENERATE}


@dataclass
class LoadedModel:
    manifest: Manifest
    runner: Runner
    batcher: MicroBatcher

    @property
    def ref(self) -> str:
        return self.manifest.ref


@dataclass
class LoadedLM:
    manifest: Manifest
    lm: CausalLM | FaultyLM
    engine: GenerationEngine

    @property
    def ref(self) -> str:
        return self.manifest.ref


def scored(runner: Runner) -> BatchFn:
    """A classifier's batch function: its logits and the probabilities it serves, both made on the
    model's thread, once per batch. The event loop is the gateway's one core for HTTP: it only slices
    each request's rows."""

    def run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        logits = runner.predict_logits(texts)
        return logits, probabilities(runner.manifest, logits)

    return run


def settle_heap() -> None:
    """Collects the garbage of loading, then moves every object alive into the collector's permanent
    generation, which its passes skip. Models stay loaded for the life of the process, and the
    hundreds of thousands of objects of a torch teacher otherwise make each full pass stop the whole
    process, event loop included, for a quarter of a second: under load, one every few seconds,
    the p99 of /classify. Models are only ever added, so nothing frozen is dropped later."""
    gc.collect()
    gc.freeze()


class ModelPool:
    def __init__(self, registry: Registry, settings: Settings, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}  # /classify
        self.lms: dict[str, LoadedLM] = {}  # /generate

    def load_all(self) -> None:
        """Loads every registered model of a served task not loaded yet (blocking: call it off the loop).

        The new mapping replaces the old in one assignment: request handlers iterating the old one on the
        event loop never see it change size under them.
        """
        added: dict[str, LoadedModel] = {}
        added_lms: dict[str, LoadedLM] = {}
        unavailable: list[str] = []
        # Real models first: a fault model then shares the weights of the model it wraps.
        for manifest in sorted(self.registry.list(), key=lambda m: m.kind == "fault"):
            if manifest.ref in self.models or manifest.ref in self.lms:
                continue
            try:
                if manifest.task_kind is TaskKind.CLASSIFY:
                    added[manifest.ref] = self._load(manifest)
                else:
                    added_lms[manifest.ref] = self._load_lm(manifest, {**self.lms, **added_lms})
            except RegistryError as exc:  # its files are missing or corrupt: the others still load
                unavailable.append(str(exc))
                continue
            log.info("loaded %s (%s, %s)", manifest.ref, manifest.role, manifest.format)
        if added:
            self.models = {**self.models, **added}
        if added_lms:
            self.lms = {**self.lms, **added_lms}
        if added or added_lms:
            settle_heap()
        if unavailable:
            raise RegistryError("; ".join(unavailable))

    def _load(self, manifest: Manifest) -> LoadedModel:
        threads = (
            self.settings.teacher_threads if manifest.role == Role.TEACHER else self.settings.student_threads
        )
        prefer_onnx = self.settings.teacher_runtime == "onnx"
        runner = load_runner(self.registry, manifest.ref, threads=threads, prefer_onnx=prefer_onnx)
        histogram = self.metrics.batch_size.labels(manifest.task, manifest.ref)
        batcher = MicroBatcher(
            scored(runner),
            max_batch=self.settings.max_batch_size,
            max_wait=self.settings.max_wait_ms / 1000.0,
            name=manifest.ref,
            observe=histogram.observe,
        )
        return LoadedModel(manifest, runner, batcher)

    def _load_lm(self, manifest: Manifest, loaded: dict[str, LoadedLM]) -> LoadedLM:
        import torch

        from gateway.serving.engine import GenerationEngine

        # torch's intra-op pool is per process and every engine thread uses it: with two models each on
        # 2 threads, a teacher prefill ran 20x slower here. One thread per engine; engines run side by side.
        torch.set_num_threads(self.settings.generate_threads)
        lm = self._lm(manifest, loaded)
        engine = GenerationEngine(
            lm,
            max_active=self.settings.generate_max_active,
            max_waiting=self.settings.generate_max_waiting,
            # the teacher keeps its own top-k while generating: its records need no second pass
            record_topk=self.settings.shadow_topk if manifest.role == "teacher" else None,
        )
        return LoadedLM(manifest, lm, engine.start())

    def _lm(self, manifest: Manifest, loaded: dict[str, LoadedLM]) -> CausalLM | FaultyLM:
        from distill.generate.faults import FaultyLM
        from distill.generate.runner import CausalLM, load_lm

        if manifest.kind == "fault":
            if manifest.fault is None:
                raise RegistryError(f"{manifest.ref} is a fault model without a fault spec")
            wrapped = loaded.get(manifest.fault.wraps)  # share the weights of the model it wraps
            inner = wrapped.lm if wrapped is not None else None
            base = inner if isinstance(inner, CausalLM) else load_lm(self.registry, manifest.fault.wraps)
            return FaultyLM(manifest, base, manifest.fault)
        return load_lm(self.registry, manifest.ref)

    def tasks_of(self) -> dict[str, str]:
        """The task of each loaded model, by ref."""
        tasks: dict[str, str] = {ref: m.manifest.task for ref, m in self.models.items()}
        tasks.update({ref: m.manifest.task for ref, m in self.lms.items()})
        return tasks

    def tasks(self) -> dict[str, TaskKind]:
        """The served tasks and their kinds: the bundled two (served once they have a model) and every
        task a loaded model belongs to."""
        tasks = dict(BUNDLED_TASKS)
        for manifest in [m.manifest for m in self.models.values()] + [m.manifest for m in self.lms.values()]:
            tasks[manifest.task] = manifest.task_kind
        return tasks

    def manifest_of(self, ref: str) -> Manifest | None:
        loaded = self.models.get(ref) or self.lms.get(ref)
        return None if loaded is None else loaded.manifest

    def teacher_ref(self, task: str) -> str | None:
        teacher = self.teacher_of(task) or self.lm_teacher(task)
        return None if teacher is None else teacher.ref

    def teacher_of(self, task: str) -> LoadedModel | None:
        """A classify task's teacher: `settings.teacher[task]` if set (it may be a fault model), else the
        latest."""
        return _pick_teacher(self.models, self.settings.teacher.get(task), task)

    def lm_teacher(self, task: str = TaskKind.GENERATE.value) -> LoadedLM | None:
        """A generate task's teacher: `settings.teacher[task]` if set, else the latest."""
        return _pick_teacher(self.lms, self.settings.teacher.get(task), task)

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.close()
        for lm in self.lms.values():
            lm.engine.close()


M = TypeVar("M", LoadedModel, LoadedLM)


def _pick_teacher(models: dict[str, M], configured: str | None, task: str) -> M | None:
    if configured is not None:
        return models.get(configured)
    teachers = [
        m
        for m in models.values()
        if m.manifest.task == task and m.manifest.role == Role.TEACHER and m.manifest.kind == "model"
    ]
    return max(teachers, key=lambda m: m.manifest.version) if teachers else None
