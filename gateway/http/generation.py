"""The one request path of generation, which `POST /generate` and the OpenAI-compatible routes both
adapt: route (traffic split, sticky key, pin), tokenize on the model's engine thread, bound the requests
in flight, start on the chosen model with fallback to the teacher while nothing has been sent, run to the
end (streamed or not; a client that goes away stops it), account (metrics, live window) and offer the
completion to shadow. An adapter only translates its protocol's body into a `GenerationRequest` and the
events or the final `Outcome` into its protocol's answer.

    generation = await start_generation_request(state, GenerationRequest(...))
    outcome = await generation.complete(request.is_disconnected)        # one JSON answer, or
    async for event in generation.events(): ...                          # a stream (Delta, Finished, Failed)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.errors import InvalidInput, ModelUnavailable, NotReady, Overloaded
from gateway.serving.generation_events import Delta, Event, Failed, Finished, GenerationParams
from gateway.serving.pool import LoadedLM
from gateway.shadow.generate import GenerateShadowItem
from gateway.state import GatewayState

if TYPE_CHECKING:  # the engine imports torch; a gateway that loads no LM never does
    from gateway.serving.engine import Job

log = logging.getLogger("kdgate.generate")
TASK = "generate"
DISCONNECT_POLL_SECONDS = 0.5  # how often a non-streaming request checks that its client is still there
Disconnected = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class GenerationRequest:
    """What every protocol asks of a generation, once its own body is validated."""

    prompt: str | None  # raw text, continued as is; or
    messages: list[dict[str, str]] | None  # chat, through the model's chat template
    params: GenerationParams
    request_id: str
    key: str | None  # sticky routing key (None: the request id)
    pinned: str | None = None  # a loaded model ref, bypassing the split
    pinned_field: str = "x-kdgate-model"  # where the pin came from, for the error naming it
    task: str = TASK  # a served generate task (the caller checked)


def check_generation_limits(state: GatewayState, max_tokens: int, texts: dict[str, str], field: str) -> None:
    """The limits that are settings: `max_tokens`, and the prompt's `texts` (by the field each came from:
    none empty, all together within `max_prompt_chars`, else an error naming `field`)."""
    settings = state.settings
    if max_tokens > settings.max_tokens_limit:
        raise InvalidInput(
            f"max_tokens must be at most {settings.max_tokens_limit}, got {max_tokens}", field="max_tokens"
        )
    if not texts:
        raise InvalidInput(f"'{field}' must hold at least one message", field=field)
    for where, text in texts.items():
        if not text.strip():
            raise InvalidInput("must not be empty", field=where)
    total = sum(len(t) for t in texts.values())
    if total > settings.max_prompt_chars:
        raise InvalidInput(
            f"prompt longer than {settings.max_prompt_chars} characters ({total})", field=field
        )


def choose(state: GatewayState, task: str, key: str, pinned: str | None, pinned_field: str) -> LoadedLM:
    lms = state.pool.lms
    if pinned is not None:
        if pinned not in lms or lms[pinned].manifest.task != task:
            raise InvalidInput(f"no loaded {task} model {pinned!r}", field=pinned_field)
        return lms[pinned]
    teacher = state.pool.lm_teacher(task)
    if teacher is None:
        raise state.no_model(task)
    return state.routed(task, key, lms, teacher)


@dataclass
class Outcome:
    """What one /generate request produced, for accounting once it is over."""

    chosen: LoadedLM
    served: LoadedLM
    started: float
    first_token_at: float | None = None
    reason: str = "pending"  # then: stop | length | cancelled | error
    completion_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: Finished | None = None

    def saw(self, event: Event) -> None:
        if isinstance(event, Delta) and self.first_token_at is None:
            self.first_token_at = time.perf_counter()


async def _start(
    state: GatewayState, outcome: Outcome, teacher: LoadedLM, prompt_ids: list[int], params: GenerationParams
) -> tuple[Job, Event]:
    """Submits to the chosen model and waits for its first event. A student that fails or is too slow
    before anything was sent is replaced by the teacher (the client gets an answer, the student the
    blame: `kdgate_fallbacks_total` and an error in its window)."""
    loop = asyncio.get_running_loop()
    chosen = outcome.chosen
    job = chosen.engine.submit(prompt_ids, params, loop)
    if chosen is teacher:
        return job, await job.queue.get()
    try:
        first = await asyncio.wait_for(job.queue.get(), state.settings.first_token_timeout_ms / 1000.0)
        if not isinstance(first, Failed):
            return job, first
        reason = "error"
    except TimeoutError:
        reason = "timeout"
    job.cancel()
    state.metrics.fallbacks.labels(teacher.manifest.task, chosen.ref, reason).inc()
    outcome.served = teacher
    job = teacher.engine.submit(prompt_ids, params, loop)
    return job, await job.queue.get()


@dataclass
class Generation:
    """A started generation: its first event is in hand, its slot in flight taken."""

    state: GatewayState
    outcome: Outcome
    teacher: LoadedLM
    request_id: str
    prompt_ids: list[int]
    params: GenerationParams
    job: Job
    first: Event
    end: StreamEnd

    @property
    def served(self) -> LoadedLM:
        return self.outcome.served

    async def complete(self, disconnected: Disconnected) -> Outcome:
        """Runs to the end and accounts for it; a student that fails midway is replaced by the teacher
        (nothing was sent yet). Raises ModelUnavailable when no model could answer."""
        try:
            await _complete(self, disconnected)
        finally:
            self.state.in_flight.leave()
            _account(
                self.state, self.outcome, self.teacher, self.request_id, self.prompt_ids, _code(self.outcome)
            )
        if self.outcome.reason == "error":
            raise ModelUnavailable(f"{self.outcome.served.ref} failed while generating; retry later")
        return self.outcome

    async def events(self) -> AsyncIterator[Event]:
        """The events as they come (Delta..., then Finished or Failed). `end` frees the slot and accounts
        once, whether the stream ends, fails or its client goes away; an adapter also runs it as its
        response's background task (Starlette skips a body iterator whose client left before it began)."""
        try:
            async for event in _events(self.job, self.first, self.outcome):
                yield event
        finally:
            self.end()


async def start_generation_request(state: GatewayState, request: GenerationRequest) -> Generation:
    """Routes, tokenizes and starts `request`, with fallback to the teacher before anything is sent."""
    if not state.ready:
        raise NotReady("models are still loading")
    task = request.task
    teacher = state.pool.lm_teacher(task)
    if teacher is None:
        raise state.no_model(task)
    chosen = choose(state, task, request.key or request.request_id, request.pinned, request.pinned_field)
    # tokenized on the model's engine thread: a long prompt or chat template never stalls the event loop
    prompt_ids = await chosen.engine.encode(
        request.prompt, request.messages, state.settings.max_prompt_tokens
    )
    if state.in_flight.count >= state.settings.max_in_flight:
        state.metrics.rejected.labels("overloaded").inc()
        raise Overloaded(f"more than {state.settings.max_in_flight} requests in flight; retry shortly")
    outcome = Outcome(chosen, chosen, time.perf_counter())
    rid = request.request_id
    state.in_flight.enter()
    try:
        job, first = await _start(state, outcome, teacher, prompt_ids, request.params)
    except Exception as exc:
        state.in_flight.leave()
        outcome.reason = "error"
        code = "429" if isinstance(exc, Overloaded) else "503"
        _account(state, outcome, teacher, rid, prompt_ids, code=code)
        if isinstance(exc, Overloaded):
            raise
        log.error("the %s teacher failed", task, exc_info=True)
        raise ModelUnavailable(f"the {task} teacher failed; retry later") from exc
    if isinstance(first, Failed):  # the teacher itself failed before its first token
        state.in_flight.leave()
        outcome.reason = "error"
        _account(state, outcome, teacher, rid, prompt_ids, code="503")
        raise ModelUnavailable(f"the {task} teacher failed; retry later")
    end = StreamEnd(state, outcome, teacher, rid, prompt_ids, job)
    return Generation(state, outcome, teacher, rid, prompt_ids, request.params, job, first, end)


async def _complete(generation: Generation, disconnected: Disconnected) -> None:
    """Runs a non-streaming generation to its end. Nothing has been sent yet, so a student that fails
    midway is replaced by the teacher from the start."""
    g, outcome = generation, generation.outcome
    async for _ in _watch_disconnect(_events(g.job, g.first, outcome), disconnected, g.job, outcome):
        pass
    if outcome.reason == "error" and outcome.served is not g.teacher:
        g.state.metrics.fallbacks.labels(g.teacher.manifest.task, outcome.served.ref, "error").inc()
        outcome.served, outcome.text, outcome.first_token_at = g.teacher, "", None
        job = g.teacher.engine.submit(g.prompt_ids, g.params, asyncio.get_running_loop())
        first = await job.queue.get()
        async for _ in _watch_disconnect(_events(job, first, outcome), disconnected, job, outcome):
            pass


def _code(outcome: Outcome) -> str:
    return {"error": "503", "pending": "503", "cancelled": "499"}.get(outcome.reason, "200")


async def _events(job: Job, first: Event, outcome: Outcome) -> AsyncIterator[Event]:
    """The job's events from the first on; records the outcome as they pass."""
    event: Event = first
    while True:
        outcome.saw(event)
        if isinstance(event, Finished):
            outcome.finished, outcome.reason, outcome.text = event, event.reason, event.text
            outcome.completion_ids = event.completion_ids
        elif isinstance(event, Failed):
            outcome.reason = "error"
        else:
            outcome.text += event.text
        yield event
        if not isinstance(event, Delta):
            return
        event = await job.queue.get()


async def _watch_disconnect(
    events: AsyncIterator[Event], disconnected: Disconnected, job: Job, outcome: Outcome
) -> AsyncIterator[Event]:
    """Passes events through; a client that went away cancels the job (non-streaming requests)."""
    pending = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=DISCONNECT_POLL_SECONDS)
            if not done:
                if await disconnected():
                    job.cancel()
                    outcome.reason = "cancelled"
                    return
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield event
            pending = asyncio.ensure_future(anext(events))
    finally:
        if not pending.done():
            pending.cancel()
            job.cancel()


@dataclass
class StreamEnd:
    """Ends a streamed request exactly once: frees its slot, stops its job, accounts for it.

    Called from the stream's `finally` and again as the response's background task: Starlette skips
    the body iterator entirely when the client hangs up before the first chunk (its `finally` never
    runs then), but runs the background task either way.
    """

    state: GatewayState
    outcome: Outcome
    teacher: LoadedLM
    request_id: str
    prompt_ids: list[int]
    job: Job
    done: bool = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        if self.outcome.finished is None:
            self.job.cancel()  # the client went away (or the send failed): stop generating for it
            if self.outcome.reason == "pending":
                self.outcome.reason = "cancelled"
        self.state.in_flight.leave()
        _account(
            self.state, self.outcome, self.teacher, self.request_id, self.prompt_ids, code=_code(self.outcome)
        )


def _account(
    state: GatewayState,
    outcome: Outcome,
    teacher: LoadedLM,
    request_id: str,
    prompt_ids: list[int],
    code: str,
) -> None:
    m, served, chosen = state.metrics, outcome.served, outcome.chosen
    task = teacher.manifest.task
    now = time.perf_counter()
    m.requests.labels(task, served.ref, code).inc()
    m.finished.labels(task, served.ref, outcome.reason).inc()
    if code in ("429", "503") and not outcome.completion_ids:
        state.window.add(chosen.ref, requests=1, errors=1)
        return
    m.request_seconds.labels(task, served.ref).observe(now - outcome.started)
    tokens = len(outcome.completion_ids)
    m.tokens.labels(task, served.ref, "prompt").inc(len(prompt_ids))
    m.tokens.labels(task, served.ref, "completion").inc(tokens)
    per_token_ms = None
    if outcome.first_token_at is not None:
        m.time_to_first_token.labels(task, served.ref).observe(outcome.first_token_at - outcome.started)
        if tokens > 1:
            per_token = (now - outcome.first_token_at) / (tokens - 1)
            m.time_per_output_token.labels(task, served.ref).observe(per_token)
            per_token_ms = per_token * 1000.0
    failed = served is not chosen or outcome.reason == "error"
    # The rollout's latency guard for /generate reads time per output token (the window's "latency").
    state.window.add(chosen.ref, latency_ms=per_token_ms, requests=1, errors=int(failed))
    if state.generate_shadow is not None and outcome.finished is not None and outcome.completion_ids:
        state.generate_shadow.offer(
            GenerateShadowItem(
                task=task,
                request_id=request_id,
                at=time.time(),
                served=served,
                prompt_ids=prompt_ids,
                finished=outcome.finished,
                latency_ms=(now - outcome.started) * 1000.0,
            ),
            teacher,
        )
