"""The shared shadow pipeline with a tiny fake scorer: eligibility, sampling, lanes, drop and error
accounting (metrics and live window, in the item's weight), the workers and the graceful drain."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from durablefs.shared import SharedDocument
from gateway.serving.generation_events import Finished
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.window import LiveWindow
from gateway.settings import Settings
from gateway.shadow.generate import GenerateShadow, GenerateShadowItem
from gateway.shadow.pipeline import Lane, ShadowPipeline
from gateway.shadow.queue import FavouredAsyncQueue
from gateway.shadow.rates import ShadowRates
from gateway.shadow.thread import NicedThread

SAMPLED, UNSAMPLED, CANDIDATE, TEACHER = "student@1", "student@2", "student@3", "teacher@1"


@dataclass(frozen=True)
class Served:
    ref: str


@dataclass(frozen=True)
class Item:
    request_id: str
    served: Served
    weight: int = 3  # texts or tokens: every count is in it
    task: str = "fake"


@dataclass
class Writer:
    records: list[Any] = field(default_factory=list)
    closed: bool = False

    def append(self, record: Any) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


class FakeShadow(ShadowPipeline[Item]):
    """Scores by writing the request id; an id starting with "bad" fails. While `hold` is unset a
    batch waits in the scorer (as on a slow teacher), after setting `entered`."""

    kind = "fake"

    def __init__(self, tmp_path: Path, queue_size: int = 4) -> None:
        settings = Settings(state_dir=tmp_path, shadow_rates={SAMPLED: 1.0, UNSAMPLED: 0.0, CANDIDATE: 1.0})
        self.metrics, self.window, self.log = GatewayMetrics(), LiveWindow(), Writer()
        self.batches: list[list[str]] = []
        self.failures: list[tuple[list[str], object]] = []
        self.hold, self.entered = asyncio.Event(), asyncio.Event()
        self.hold.set()
        super().__init__(
            settings,
            self.metrics,
            self.window,
            self.log,
            ShadowRates(SharedDocument(tmp_path / "rates.json"), settings),
            lambda ref: ref == CANDIDATE,
            score=Lane(FavouredAsyncQueue(queue_size), self._score, most=2),
            own=Lane(FavouredAsyncQueue(queue_size, reserve=0), self._score),
        )

    def weight(self, item: Item) -> int:
        return item.weight

    def log_failure(self, items: list[Item], why: object) -> None:
        self.failures.append(([item.request_id for item in items], why))

    async def _score(self, items: list[Item]) -> float:
        self.entered.set()
        await self.hold.wait()
        ids = [item.request_id for item in items]
        if any(i.startswith("bad") for i in ids):
            raise ValueError("the teacher failed")
        self.batches.append(ids)
        for i in ids:
            self.writer.append(i)
        return 0.0

    def count(self, model: str, outcome: str) -> float:
        labels = {"task": "fake", "model": model, "outcome": outcome}
        return shadow_total(self.metrics, labels)

    def eligible(self, model: str) -> float:
        labels = {"task": "fake", "model": model}
        return self.metrics.registry.get_sample_value("kdgate_shadow_eligible_total", labels) or 0.0


TEACHER_MODEL = Served(TEACHER)


def shadow_total(metrics: GatewayMetrics, labels: dict[str, str]) -> float:
    """kdgate_shadow_total over every reason (a drop carries one)."""
    return sum(
        sample.value
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "kdgate_shadow_total" and labels.items() <= sample.labels.items()
    )


def offer(shadow: FakeShadow, request_id: str, model: str, weight: int = 3) -> None:
    served = TEACHER_MODEL if model == TEACHER else Served(model)
    shadow.offer(Item(request_id, served, weight), TEACHER_MODEL)


def test_student_items_are_eligible_and_sampled_by_their_models_rate(tmp_path: Path) -> None:
    shadow = FakeShadow(tmp_path, queue_size=64)
    for n in range(5):
        offer(shadow, f"a{n}", SAMPLED)
        offer(shadow, f"b{n}", UNSAMPLED)
    for model in (SAMPLED, UNSAMPLED):
        assert shadow.eligible(model) == 15 and shadow.window.totals(model).eligible == 15
    assert shadow.queue.qsize() == 5 and shadow.own_queue.qsize() == 0
    assert [shadow.queue.get_nowait().served.ref for _ in range(5)] == [SAMPLED] * 5


def test_teacher_served_items_go_to_their_own_lane_and_are_not_eligible(tmp_path: Path) -> None:
    shadow = FakeShadow(tmp_path)
    offer(shadow, "t0", TEACHER)
    assert shadow.own_queue.qsize() == 1 and shadow.queue.qsize() == 0
    assert shadow.eligible(TEACHER) == 0 and shadow.window.totals(TEACHER).eligible == 0


def test_nothing_is_counted_without_a_teacher_or_without_anything_to_shadow(tmp_path: Path) -> None:
    shadow = FakeShadow(tmp_path)
    shadow.offer(Item("n0", Served(SAMPLED)), teacher=None)
    offer(shadow, "n1", SAMPLED, weight=0)
    assert shadow.eligible(SAMPLED) == 0 and shadow.queue.qsize() == 0


def test_a_full_lane_drops_and_counts_in_weight_but_keeps_room_for_the_candidate(tmp_path: Path) -> None:
    shadow = FakeShadow(tmp_path, queue_size=4)  # a reserve of one place for the candidate
    for n in range(5):
        offer(shadow, f"s{n}", SAMPLED)
    assert shadow.count(SAMPLED, "dropped") == 6 and shadow.window.totals(SAMPLED).dropped == 6
    offer(shadow, "c0", CANDIDATE)
    offer(shadow, "c1", CANDIDATE)
    assert shadow.count(CANDIDATE, "dropped") == 3 and shadow.window.totals(CANDIDATE).dropped == 3
    assert shadow.queue.get_nowait().request_id == "c0"  # the candidate's lane is taken first
    for n in range(5):
        offer(shadow, f"t{n}", TEACHER)
    assert shadow.count(TEACHER, "dropped") == 3 and shadow.window.totals(TEACHER).dropped == 3


def test_workers_score_in_batches_count_failures_and_drain_on_close(tmp_path: Path) -> None:
    async def scenario() -> FakeShadow:
        shadow = FakeShadow(tmp_path, queue_size=64)
        shadow.start()  # the workers run once this coroutine waits: all five are queued by then
        for request_id in ("s0", "s1", "bad", "s3", "s4"):
            offer(shadow, request_id, SAMPLED, weight=2)
        offer(shadow, "t0", TEACHER)
        await shadow.close(drain_seconds=60)
        return shadow

    shadow = asyncio.run(scenario())
    scored = [batch for batch in shadow.batches if batch != ["t0"]]  # the lanes' workers interleave
    assert scored == [["s0", "s1"], ["s4"]] and ["t0"] in shadow.batches and shadow.log.closed
    ((failed, why),) = shadow.failures  # the whole batch fails with its teacher call
    assert failed == ["bad", "s3"] and isinstance(why, ValueError)
    assert shadow.count(SAMPLED, "error") == 4 and shadow.count(SAMPLED, "dropped") == 0


def test_close_past_the_drain_time_counts_what_is_still_queued_as_dropped(tmp_path: Path) -> None:
    async def scenario() -> FakeShadow:
        shadow = FakeShadow(tmp_path, queue_size=64)
        shadow.hold.clear()  # the teacher never answers
        shadow.start()
        for n in range(5):
            offer(shadow, f"s{n}", SAMPLED)
        await shadow.entered.wait()  # the worker holds a batch of two; three stay queued
        await shadow.close(drain_seconds=0)
        return shadow

    shadow = asyncio.run(scenario())
    assert shadow.count(SAMPLED, "dropped") == 9 and shadow.log.closed
    assert shadow.window.totals(SAMPLED).dropped == 0  # a drop at the stop does not feed the judge


def test_an_offer_from_another_thread_is_handed_to_the_event_loop(tmp_path: Path) -> None:
    async def scenario() -> FakeShadow:
        shadow = FakeShadow(tmp_path, queue_size=64)
        shadow.start()
        await asyncio.to_thread(offer, shadow, "s0", SAMPLED)
        await shadow.close(drain_seconds=60)
        return shadow

    shadow = asyncio.run(scenario())
    assert shadow.log.records == ["s0"] and shadow.eligible(SAMPLED) == 3


def test_niced_thread_runs_calls_in_its_own_thread_and_hands_back_their_errors() -> None:
    def where() -> str:
        return threading.current_thread().name

    def fail() -> Any:
        raise ValueError("no")

    async def scenario(thread: NicedThread) -> str:
        with pytest.raises(ValueError):
            await thread.run(fail)
        return await thread.run(where)

    thread = NicedThread("shadow-test", nice=0)
    assert asyncio.run(scenario(thread)) == "shadow-test"
    thread.stop(timeout=30)


class Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


@dataclass(frozen=True)
class FailingLM:
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    def completion_logits(self, prompt_ids: list[int], ids: list[int]) -> Any:
        raise RuntimeError("the student failed")


@dataclass(frozen=True)
class LM:
    ref: str
    lm: FailingLM = field(default_factory=FailingLM)


@dataclass(frozen=True)
class Pool:
    teacher: LM

    def lm_teacher(self, task: str) -> LM:
        return self.teacher


def test_generate_shadow_logs_the_teachers_own_completion_and_counts_a_failure_in_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/generate's subclass on the shared pipeline: its scorer runs in the niced thread, and what the
    base counts is in completion tokens."""
    teacher, student = LM(TEACHER), LM(SAMPLED)
    settings = Settings(state_dir=tmp_path, shadow_generate_queue_size=4)
    metrics, writer = GatewayMetrics(), Writer()
    rates = ShadowRates(SharedDocument(tmp_path / "rates.json"), settings)
    shadow = GenerateShadow(settings, metrics, Pool(teacher), LiveWindow(), writer, rates)

    def item(request_id: str, served: LM, tokens: int) -> GenerateShadowItem:
        finished = Finished("length", "", list(range(tokens)), [0.0] * tokens, topk=None)
        return GenerateShadowItem("generate", request_id, 0.0, served, [1], finished, 1.0)

    async def scenario() -> None:
        shadow.start()
        shadow.offer(item("own", teacher, 3), teacher)
        shadow.offer(item("student", student, 5), teacher)
        await shadow.close(drain_seconds=60)

    asyncio.run(scenario())
    assert [record["request_id"] for record in writer.records] == ["own"] and writer.closed
    error = {"task": "generate", "model": SAMPLED, "outcome": "error", "reason": ""}
    assert metrics.registry.get_sample_value("kdgate_shadow_total", error) == 5
    assert "shadow scoring failed for student" in caplog.text
