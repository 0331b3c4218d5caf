"""Shadow scoring for /generate: the teacher reads the student's own completion, after it was sent.

No teacher generation on this path: one teacher-forced pass over prompt + completion gives, per
generated position, the teacher's top-k ids and logprobs and its tail mass; one student pass over the
same tokens gives the student's distribution there. From both: per-token agreement (teacher argmax ==
student token), KL(teacher ‖ student) on the top-k support + tail, the tokens the teacher accepts
before its first disagreement, and degeneracy (a repetition loop agrees well with a teacher that copies
it, so degeneracy is measured and guarded separately). Teacher-served completions are logged without a
second teacher call.

Request path: `offer()` decides and enqueues (bounded; full → dropped and counted; the candidate of
an active rollout first, with room kept for it: shadow_queue.py). One worker thread, niced below
serving, scores items one by one.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distill.generate.degeneracy import distinct_n, is_degenerate
from distill.generate.runner import kl_against
from distill.shadowlog.writer import ShadowLogWriter
from gateway.serving.engine import Finished
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.pool import LoadedLM, ModelPool
from gateway.serving.window import LiveWindow
from gateway.settings import Settings
from gateway.shadow.classify import should_shadow
from gateway.shadow.queue import FavouredThreadQueue
from gateway.shadow.rates import ShadowRates
from gateway.shadow.teacher_process import lower_priority

log = logging.getLogger("kdgate.shadow.generate")
TASK = "generate"


@dataclass(frozen=True)
class GenerateShadowItem:
    request_id: str
    at: float  # wall clock, epoch seconds
    served: LoadedLM
    prompt_ids: list[int]
    finished: Finished  # the completion: ids, text, how it ended, the served model's own logprobs
    latency_ms: float

    @property
    def completion_ids(self) -> list[int]:
        return self.finished.completion_ids

    @property
    def prompt_text(self) -> str:
        """The prompt as the model read it (chat template applied). Decoded when the worker logs the item:
        the tokenizer stays off the event loop, and a dropped item costs nothing."""
        return str(self.served.lm.tokenizer.decode(self.prompt_ids))


def accepted_prefix(agree: np.ndarray) -> int:
    """Tokens the teacher accepts before its first disagreement (all of them if it never disagrees)."""
    misses = np.flatnonzero(~agree)
    return int(misses[0]) if misses.size else int(agree.size)


class GenerateShadow:
    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        pool: ModelPool,
        window: LiveWindow,
        writer: ShadowLogWriter,
        rates: ShadowRates,
        favoured: Callable[[str], bool] = lambda ref: False,
    ) -> None:
        self.settings = settings
        self.rates = rates
        self.favoured = favoured  # is this model the candidate of an active rollout?
        self.metrics = metrics
        self.pool = pool
        self.window = window
        self.writer = writer
        self.queue: FavouredThreadQueue[GenerateShadowItem] = FavouredThreadQueue(
            settings.shadow_generate_queue_size
        )
        self._thread = threading.Thread(target=self._run, name="shadow-generate", daemon=True)
        self._stop_at: float | None = None  # set by close(): past it, queued items are dropped

    def start(self) -> GenerateShadow:
        self._thread.start()
        return self

    def offer(self, item: GenerateShadowItem, teacher: LoadedLM) -> None:
        """Called on the request path: O(1), never blocks. Counts are in completion tokens."""
        model, tokens = item.served.ref, len(item.completion_ids)
        if not item.completion_ids:
            return
        if item.served is not teacher:
            self.window.add(model, eligible=tokens)
            self.metrics.shadow_eligible.labels(TASK, model).inc(tokens)
            if not should_shadow(item.request_id, self.rates.rate(model)):
                return
        if not self.queue.offer(item, favoured=item.served is not teacher and self.favoured(model)):
            self.metrics.shadow.labels(TASK, model, "dropped").inc(tokens)
            self.window.add(model, dropped=tokens)

    def close(self, drain_seconds: float = 10.0) -> None:
        """Graceful stop: score what is queued until `drain_seconds` have passed, drop the rest (each
        item costs teacher passes: a long queue must not keep the cores busy after the stop), then
        flush the log."""
        self._stop_at = time.monotonic() + drain_seconds
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait((False, None))  # behind what is queued: the worker's stop sign
        self._thread.join(timeout=drain_seconds + 5.0)
        self.writer.close()

    def _run(self) -> None:
        lower_priority(self.settings.shadow_nice)
        while True:
            if self._stop_at is not None and time.monotonic() > self._stop_at:
                return  # stopping, past the drain deadline: what is still queued is dropped
            try:
                item = self.queue.get(timeout=0.5)  # wakes up to notice a passed deadline
            except queue.Empty:
                continue
            if item is None:
                return
            try:
                self.writer.append(self._score(item))
            except Exception:
                log.warning("shadow scoring failed for %s", item.request_id, exc_info=True)
                self.metrics.shadow.labels(TASK, item.served.ref, "error").inc(len(item.completion_ids))

    def _score(self, item: GenerateShadowItem) -> dict[str, object]:
        teacher = self.pool.lm_teacher()
        if teacher is None:
            raise RuntimeError("no generate teacher loaded to shadow with")
        model, ids = item.served.ref, item.completion_ids
        record: dict[str, object] = {
            "request_id": item.request_id,
            "ts": item.at,
            "task": TASK,
            "served_model": model,
            "teacher_model": teacher.ref,
            "input_text": item.prompt_text,
            "served_label": item.finished.reason,
            "served_ids": ids,
            "served_probs": np.exp(item.finished.token_logprobs),  # (T,) as generated
            "latency_ms": item.latency_ms,
        }
        own = item.finished.topk
        if item.served is teacher:  # its own completion: top-k recorded while generating, no second pass
            if own is not None:
                record.update(
                    teacher_topk_ids=np.stack(own.ids),
                    teacher_topk_logprobs=np.stack(own.logprobs),
                    teacher_tail_mass=np.asarray(own.tail, dtype=np.float32),
                )
            return record
        student_logits = item.served.lm.completion_logits(item.prompt_ids, ids)  # (T, V)
        scores = teacher.lm.score(item.prompt_ids, ids, self.settings.shadow_topk)
        agree = scores.agreement(ids)  # (T,)
        kl = kl_against(scores, student_logits)  # (T,)
        disagreed = int((~agree).sum())
        degenerate = is_degenerate(ids)
        m = self.metrics
        m.shadow.labels(TASK, model, "compared").inc(len(ids))
        m.shadow_compared.labels(TASK, model).inc(len(ids))
        m.shadow_disagreed.labels(TASK, model).inc(disagreed)
        for value in kl:
            m.shadow_kl.labels(TASK, model).observe(float(value))
        m.shadow_accepted.labels(TASK, model).observe(accepted_prefix(agree))
        m.shadow_completions.labels(TASK, model).inc()
        m.shadow_degenerate.labels(TASK, model).inc(int(degenerate))
        m.shadow_distinct2.labels(TASK, model).observe(distinct_n(ids, 2))
        self.window.add(
            model,
            compared=len(ids),
            disagreed=disagreed,
            kl_sum=float(kl.sum()),
            completions=1,
            degenerate=int(degenerate),
        )
        record.update(
            teacher_topk_ids=scores.topk_ids,
            teacher_topk_logprobs=scores.topk_logprobs,
            teacher_tail_mass=scores.tail_mass,
            token_agree=agree,
            kl=float(kl.mean()),  # per token; `agree` stays null: agreement is per token here
        )
        return record
