"""Shadow scoring for /classify: the teacher re-runs sampled student traffic after the response went out.

Sampling, eligibility, the queues, drop accounting and the workers are the shared pipeline's
(pipeline.py). Here, student items: a worker takes up to `shadow_batch` of them and runs the teacher
once on all their texts (a runner of its own, in a SCHED_IDLE process of its own: teacher_process.py),
then computes top-1 agreement and KL(teacher ‖ student), updates metrics and the live window and
appends one shadow record per text to the log (at serving priority, briefly), and pauses so the
teacher keeps to its CPU budget (a fixed floor; opt-in, more while serving is quiet: budget.py).
Teacher-served items have their soft output already: a second worker logs them in bulk, no teacher call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distill.classify.evaluate import kl_per_row
from distill.classify.runner import softmax
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.pool import LoadedModel, ModelPool
from gateway.serving.window import LiveWindow
from gateway.settings import Settings
from gateway.shadow.budget import pause_for_budget, shadow_budget
from gateway.shadow.pipeline import Lane, RecordLog, ShadowPipeline
from gateway.shadow.queue import FavouredAsyncQueue
from gateway.shadow.rates import ShadowRates
from gateway.shadow.teacher_process import ShadowTeacher

log = logging.getLogger("kdgate.shadow")


@dataclass(frozen=True)
class ShadowItem:
    task: str
    request_id: str
    at: float  # wall clock, epoch seconds
    served: LoadedModel
    texts: list[str]
    logits: np.ndarray  # (B, C) served logits
    latency_ms: float


OWN_LINGER_S = 0.25  # teacher-served records gather this long before one hop logs them all
OWN_BATCH = 512


def split_rows(items: list[ShadowItem], scored: np.ndarray) -> dict[int, np.ndarray]:
    """The rows of one teacher call over all items' texts, back per item (keyed by `id(item)`)."""
    out, offset = {}, 0
    for item in items:
        out[id(item)] = scored[offset : offset + len(item.texts)]
        offset += len(item.texts)
    return out


def agreement_and_kl(teacher_logits: np.ndarray, served_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    agree = teacher_logits.argmax(-1) == served_logits.argmax(-1)  # (B,)
    return agree, kl_per_row(teacher_logits, served_logits)  # (B,), (B,)


class ClassifyShadow(ShadowPipeline[ShadowItem]):
    """Two lanes, one job each: student items are scored by the teacher (at idle priority, under the
    CPU budget); teacher-served items are only logged, a few times a second in bulk, so neither the
    budget's pauses nor a starved teacher call ever hold them up."""

    kind = "classify"

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        pool: ModelPool,
        window: LiveWindow,
        writer: RecordLog,
        rates: ShadowRates,
        busy_share: Callable[[], float | None] = lambda: None,
        favoured: Callable[[str], bool] = lambda ref: False,
    ) -> None:
        size = settings.shadow_queue_size
        super().__init__(
            settings,
            metrics,
            window,
            writer,
            rates,
            favoured,
            score=Lane(FavouredAsyncQueue(size), self._score, settings.shadow_batch, rest=self._rest),
            own=Lane(FavouredAsyncQueue(size, reserve=0), self._log_own, OWN_BATCH, linger=OWN_LINGER_S),
        )
        self.pool = pool
        self.busy_share = busy_share  # share of recent time serving had a request in flight
        self.teacher = ShadowTeacher(  # a private teacher, not the serving one, in its own process
            pool.registry,
            nice=settings.shadow_nice,
            idle_class=settings.shadow_idle_class,
            prefer_onnx=settings.teacher_runtime == "onnx",
        )

    def weight(self, item: ShadowItem) -> int:
        return len(item.texts)

    def log_failure(self, items: list[ShadowItem], why: object) -> None:
        failure = isinstance(why, Exception)
        log.warning("shadow scoring failed for %d items: %s", len(items), why, exc_info=failure)

    async def prepare(self) -> None:
        try:
            await self.teacher.worker_pid()
        except Exception:  # the first batch tries again, and counts its failure
            log.warning("the shadow teacher's process did not start", exc_info=True)

    async def stop_scoring(self) -> None:
        # A batch still with the teacher past the drain time was cancelled, which stops its process.
        await self.teacher.close()

    def _rest(self, cpu_s: float) -> float:
        return pause_for_budget(cpu_s, self._budget())

    def _budget(self) -> float | None:
        """This batch's budget: from the floor (serving always busy) up to the idle budget (serving idle)."""
        settings = self.settings
        budget = shadow_budget(self.busy_share(), settings.shadow_max_cpu, settings.shadow_idle_cpu)
        self.metrics.shadow_budget.labels(self.kind).set(1.0 if budget is None else budget)  # one thread: ≤ 1
        return budget

    async def _log_own(self, items: list[ShadowItem]) -> float:
        """Teacher-served records need no teacher call: at serving priority (never starved), a batch at
        a time (one thread hop per batch, not per request)."""
        await asyncio.to_thread(self._log, items, {})
        return 0.0

    async def _score(self, students: list[ShadowItem]) -> float:
        """Scores and logs `students`, each task's with its own teacher; the seconds of CPU it took."""
        by_task: dict[str, list[ShadowItem]] = {}
        for item in students:
            by_task.setdefault(item.task, []).append(item)
        cpu_s = 0.0
        for task, items in by_task.items():
            teacher = self.pool.teacher_of(task)
            if teacher is None:
                self.failed(items, f"no {task} teacher loaded to shadow with")
                continue
            texts = [t for item in items for t in item.texts]
            try:
                scored, spent = await self.teacher.score(teacher.ref, texts)  # (ΣB, C), its CPU seconds
            except Exception as exc:  # this task's items only: another task's may be logged already
                self.failed(items, exc)
                continue
            cpu_s += spent
            # Only the teacher call is at idle priority: the bookkeeping takes locks the request path
            # takes too (metrics, live window), and must not sit on them while starved.
            await asyncio.to_thread(self._log, items, split_rows(items, scored), teacher.ref)
        return cpu_s

    def _log(
        self, items: list[ShadowItem], teacher_logits: dict[int, np.ndarray], teacher_ref: str | None = None
    ) -> None:
        """Appends each item's records; `teacher_ref` None: teacher-served items, their own teacher."""
        for item in items:
            ref = teacher_ref or item.served.ref
            for record in self._records(item, ref, teacher_logits.get(id(item))):
                self.writer.append(record)

    def _records(
        self, item: ShadowItem, teacher_ref: str, teacher: np.ndarray | None
    ) -> list[dict[str, object]]:
        model, task = item.served.ref, item.task
        labels = item.served.manifest.labels
        probs = softmax(item.logits)
        if teacher is None:  # served by the teacher: its own logits are the soft output
            agree: list[bool | None] = [None] * len(item.texts)
            kl: list[float | None] = [None] * len(item.texts)
            teacher = item.logits
        else:
            agree_arr, kl_arr = agreement_and_kl(teacher, item.logits)
            agree, kl = [bool(a) for a in agree_arr], [float(k) for k in kl_arr]
            disagreed = int((~agree_arr).sum())
            self.metrics.shadow.labels(task, model, "compared", "").inc(len(item.texts))
            self.metrics.shadow_compared.labels(task, model).inc(len(item.texts))
            self.metrics.shadow_disagreed.labels(task, model).inc(disagreed)
            for value in kl_arr:
                self.metrics.shadow_kl.labels(task, model).observe(float(value))
            self.window.add(model, compared=len(item.texts), disagreed=disagreed, kl_sum=float(kl_arr.sum()))
        multi = len(item.texts) > 1
        return [
            {
                "request_id": f"{item.request_id}:{i}" if multi else item.request_id,
                "ts": item.at,
                "task": task,
                "served_model": model,
                "teacher_model": teacher_ref,
                "input_text": text,
                "served_label": labels[int(probs[i].argmax())],
                "served_probs": probs[i].tolist(),
                "teacher_logits": teacher[i].tolist(),
                "agree": agree[i],
                "kl": kl[i],
                "latency_ms": item.latency_ms,
            }
            for i, text in enumerate(item.texts)
        ]

    def update_rate_gauges(self) -> None:
        """Configured vs observed shadow rate per student over the live window (a stalled shadow shows),
        and the backlog of each queue."""
        self.metrics.shadow_queued.labels("score").set(self.queue.qsize())
        self.metrics.shadow_queued.labels("log").set(self.own_queue.qsize())
        tasks = self.pool.tasks_of()  # the live window holds both tasks' students
        for model in self.window.models():
            totals = self.window.totals(model)
            task = tasks.get(model)
            if totals.eligible and task is not None:
                self.metrics.shadow_rate.labels(task, model, "configured").set(self.rate_of(model))
                self.metrics.shadow_rate.labels(task, model, "observed").set(
                    totals.compared / totals.eligible
                )
