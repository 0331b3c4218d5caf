"""Shadow scoring for /generate: the teacher reads the student's own completion, after it was sent.

No teacher generation on this path: one teacher-forced pass over prompt + completion gives, per
generated position, the teacher's top-k ids and logprobs and its tail mass; one student pass over the
same tokens gives the student's distribution there. From both: per-token agreement (teacher argmax ==
student token), KL(teacher ‖ student) on the top-k support + tail, the tokens the teacher accepts
before its first disagreement, and degeneracy (a repetition loop agrees well with a teacher that copies
it, so degeneracy is measured and guarded separately). Teacher-served completions are logged without a
second teacher call.

Sampling, eligibility, the queue, drop accounting and the worker are the shared pipeline's
(pipeline.py); the one lane's items are scored one by one in a thread niced below serving (thread.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distill.generate.degeneracy import distinct_n, is_degenerate
from gateway.serving.generation_events import Finished
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.pool import LoadedLM, ModelPool
from gateway.serving.window import LiveWindow
from gateway.settings import Settings
from gateway.shadow.pipeline import Lane, RecordLog, ShadowPipeline
from gateway.shadow.queue import FavouredAsyncQueue
from gateway.shadow.rates import ShadowRates
from gateway.shadow.thread import NicedThread

log = logging.getLogger("kdgate.shadow.generate")
STOP_GRACE_S = 5.0  # a close lets the item in hand finish this long past the drain time


@dataclass(frozen=True)
class GenerateShadowItem:
    task: str
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


class GenerateShadow(ShadowPipeline[GenerateShadowItem]):
    """One lane: students' and the teacher's own completions alike, one at a time, in a niced thread."""

    kind = "generate"

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        pool: ModelPool,
        window: LiveWindow,
        writer: RecordLog,
        rates: ShadowRates,
        favoured: Callable[[str], bool] = lambda ref: False,
    ) -> None:
        score = Lane(
            FavouredAsyncQueue[GenerateShadowItem](settings.shadow_generate_queue_size), self._score_one
        )
        super().__init__(settings, metrics, window, writer, rates, favoured, score)
        self.pool = pool
        self._thread = NicedThread("shadow-generate", settings.shadow_nice)

    def weight(self, item: GenerateShadowItem) -> int:
        return len(item.completion_ids)

    def log_failure(self, items: list[GenerateShadowItem], why: object) -> None:
        exc = why if isinstance(why, BaseException) else None
        for item in items:
            log.warning("shadow scoring failed for %s", item.request_id, exc_info=exc)

    async def stop_scoring(self) -> None:
        # Each item costs teacher passes: past the drain time, only the one in hand is let finish.
        await asyncio.to_thread(self._thread.stop, STOP_GRACE_S)

    async def _score_one(self, items: list[GenerateShadowItem]) -> float:
        (item,) = items
        await self._thread.run(self._score_and_log, item)
        return 0.0  # no CPU budget: the niced thread yields to serving

    def _score_and_log(self, item: GenerateShadowItem) -> None:
        self.writer.append(self._score(item))

    def _score(self, item: GenerateShadowItem) -> dict[str, object]:
        task = item.task
        teacher = self.pool.lm_teacher(task)
        if teacher is None:
            raise RuntimeError(f"no {task} teacher loaded to shadow with")
        model, ids = item.served.ref, item.completion_ids
        record: dict[str, object] = {
            "request_id": item.request_id,
            "ts": item.at,
            "task": task,
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
        from distill.generate.runner import kl_against  # torch: only a gateway serving an LM scores one

        student_logits = item.served.lm.completion_logits(item.prompt_ids, ids)  # (T, V)
        scores = teacher.lm.score(item.prompt_ids, ids, self.settings.shadow_topk)
        agree = scores.agreement(ids)  # (T,)
        kl = kl_against(scores, student_logits)  # (T,)
        disagreed = int((~agree).sum())
        degenerate = is_degenerate(ids)
        m = self.metrics
        m.shadow.labels(task, model, "compared", "").inc(len(ids))
        m.shadow_compared.labels(task, model).inc(len(ids))
        m.shadow_disagreed.labels(task, model).inc(disagreed)
        for value in kl:
            m.shadow_kl.labels(task, model).observe(float(value))
        m.shadow_accepted.labels(task, model).observe(accepted_prefix(agree))
        m.shadow_completions.labels(task, model).inc()
        m.shadow_degenerate.labels(task, model).inc(int(degenerate))
        m.shadow_distinct2.labels(task, model).observe(distinct_n(ids, 2))
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
