"""POST /generate: validate, route, generate on the model's engine (streamed or not), fall back to the
teacher when a student fails before its answer has begun, account, and offer the completion to shadow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from gateway.errors import InvalidInput, ModelUnavailable, NotReady, Overloaded
from gateway.http.body import MAX_HEADER_CHARS
from gateway.http.schemas import GenerateRequest, GenerateResponse, Usage
from gateway.serving.engine import Delta, Event, Failed, Finished, GenerationParams, Job
from gateway.serving.pool import LoadedLM
from gateway.serving.routing import pick_model
from gateway.shadow.generate import GenerateShadowItem
from gateway.state import GatewayState

log = logging.getLogger("kdgate.generate")
router = APIRouter()
TASK = "generate"
DISCONNECT_POLL_SECONDS = 0.5  # how often a non-streaming request checks that its client is still there


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def check_limits(body: GenerateRequest, state: GatewayState) -> None:
    settings = state.settings
    if body.max_tokens > settings.max_tokens_limit:
        raise InvalidInput(
            f"max_tokens must be at most {settings.max_tokens_limit}, got {body.max_tokens}",
            field="max_tokens",
        )
    if body.messages is not None:
        if not body.messages:
            raise InvalidInput("'messages' must hold at least one message", field="messages")
        texts = {f"messages[{i}].content": m.content for i, m in enumerate(body.messages)}
    else:
        texts = {"prompt": body.prompt or ""}
    for where, text in texts.items():
        if not text.strip():
            raise InvalidInput("must not be empty", field=where)
    total = sum(len(t) for t in texts.values())
    if total > settings.max_prompt_chars:
        where = "messages" if body.messages is not None else "prompt"
        raise InvalidInput(
            f"prompt longer than {settings.max_prompt_chars} characters ({total})", field=where
        )


def choose(state: GatewayState, key: str, pinned: str | None) -> LoadedLM:
    lms = state.pool.lms
    if pinned is not None:
        if pinned not in lms:
            raise InvalidInput(f"no loaded {TASK} model {pinned!r}", field="x-kdgate-model")
        return lms[pinned]
    return lms[pick_model(state.traffic.get(TASK), key)]


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


async def start_generation(
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
    state.metrics.fallbacks.labels(TASK, chosen.ref, reason).inc()
    outcome.served = teacher
    job = teacher.engine.submit(prompt_ids, params, loop)
    return job, await job.queue.get()


def _sse(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@router.post(
    "/generate",
    response_model=GenerateResponse,
    tags=["inference"],
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    x_kdgate_key: str | None = Header(None, max_length=MAX_HEADER_CHARS),
    x_kdgate_model: str | None = Header(None, max_length=MAX_HEADER_CHARS),
    x_request_id: str | None = Header(None, max_length=MAX_HEADER_CHARS),
) -> GenerateResponse | StreamingResponse:
    """Generates a completion of `prompt`, or the assistant's reply to chat `messages`.

    With `stream: true` the answer is server-sent events: `data: {"text": ...}` per delta, then
    `data: {"finish_reason": ..., "usage": ...}` and `data: [DONE]`. A client that disconnects stops
    the generation at its next token.
    """
    state = _state(request)
    request_id = x_request_id or uuid.uuid4().hex
    request.state.request_id = request_id  # error responses carry it too (app.py)
    response.headers["x-request-id"] = request_id
    if not state.ready:
        raise NotReady("models are still loading")
    check_limits(body, state)
    teacher = state.pool.lm_teacher()
    if teacher is None:
        raise state.no_model(TASK)
    chosen = choose(state, x_kdgate_key or request_id, x_kdgate_model)
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    # tokenized on the model's engine thread: a long prompt or chat template never stalls the event loop
    prompt_ids = await chosen.engine.encode(body.prompt, messages, state.settings.max_prompt_tokens)
    if state.in_flight.count >= state.settings.max_in_flight:
        state.metrics.rejected.labels("overloaded").inc()
        raise Overloaded(f"more than {state.settings.max_in_flight} requests in flight; retry shortly")
    params = GenerationParams(
        body.max_tokens, body.temperature, body.top_p, tuple(body.stop or ()), body.seed
    )
    outcome = Outcome(chosen, chosen, time.perf_counter())
    state.in_flight.enter()
    try:
        job, first = await start_generation(state, outcome, teacher, prompt_ids, params)
    except Exception as exc:
        state.in_flight.leave()
        outcome.reason = "error"
        _account(
            state,
            outcome,
            teacher,
            request_id,
            prompt_ids,
            code="429" if isinstance(exc, Overloaded) else "503",
        )
        if isinstance(exc, Overloaded):
            raise
        log.error("the %s teacher failed", TASK, exc_info=True)
        raise ModelUnavailable(f"the {TASK} teacher failed; retry later") from exc
    if isinstance(first, Failed):  # the teacher itself failed before its first token
        state.in_flight.leave()
        outcome.reason = "error"
        _account(state, outcome, teacher, request_id, prompt_ids, code="503")
        raise ModelUnavailable(f"the {TASK} teacher failed; retry later")
    if body.stream:
        headers = {"x-request-id": request_id, "x-kdgate-model": outcome.served.ref}
        end = StreamEnd(state, outcome, teacher, request_id, prompt_ids, job)
        stream = _stream(_events(job, first, outcome), outcome, len(prompt_ids), end)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers=headers, background=BackgroundTask(end)
        )
    try:
        await _complete(state, outcome, teacher, prompt_ids, params, request, job, first)
    finally:
        state.in_flight.leave()
        _account(state, outcome, teacher, request_id, prompt_ids, code=_code(outcome))
    if outcome.reason == "error":
        raise ModelUnavailable(f"{outcome.served.ref} failed while generating; retry later")
    response.headers["x-kdgate-model"] = outcome.served.ref
    usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(outcome.completion_ids))
    return GenerateResponse(
        model=outcome.served.ref,
        request_id=request_id,
        text=outcome.text,
        finish_reason=outcome.reason,
        usage=usage,
    )


async def _complete(
    state: GatewayState,
    outcome: Outcome,
    teacher: LoadedLM,
    prompt_ids: list[int],
    params: GenerationParams,
    request: Request,
    job: Job,
    first: Event,
) -> None:
    """Runs a non-streaming generation to its end. Nothing has been sent yet, so a student that fails
    midway is replaced by the teacher from the start."""
    async for _ in _watch_disconnect(_events(job, first, outcome), request, job, outcome):
        pass
    if outcome.reason == "error" and outcome.served is not teacher:
        state.metrics.fallbacks.labels(TASK, outcome.served.ref, "error").inc()
        outcome.served, outcome.text, outcome.first_token_at = teacher, "", None
        job = teacher.engine.submit(prompt_ids, params, asyncio.get_running_loop())
        first = await job.queue.get()
        async for _ in _watch_disconnect(_events(job, first, outcome), request, job, outcome):
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
    events: AsyncIterator[Event], request: Request, job: Job, outcome: Outcome
) -> AsyncIterator[Event]:
    """Passes events through; a client that went away cancels the job (non-streaming requests)."""
    pending = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=DISCONNECT_POLL_SECONDS)
            if not done:
                if await request.is_disconnected():
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


async def _stream(
    events: AsyncIterator[Event], outcome: Outcome, prompt_tokens: int, end: StreamEnd
) -> AsyncIterator[str]:
    try:
        async for event in events:
            if isinstance(event, Delta):
                yield _sse({"text": event.text})
            elif isinstance(event, Finished):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(event.completion_ids)}
                yield _sse({"finish_reason": event.reason, "usage": usage, "model": outcome.served.ref})
                yield "data: [DONE]\n\n"
            else:
                error = {"type": "model_unavailable", "message": f"{outcome.served.ref} failed"}
                yield _sse({"error": error})
    finally:
        end()


def _account(
    state: GatewayState,
    outcome: Outcome,
    teacher: LoadedLM,
    request_id: str,
    prompt_ids: list[int],
    code: str,
) -> None:
    m, served, chosen = state.metrics, outcome.served, outcome.chosen
    now = time.perf_counter()
    m.requests.labels(TASK, served.ref, code).inc()
    m.finished.labels(TASK, served.ref, outcome.reason).inc()
    if code in ("429", "503") and not outcome.completion_ids:
        state.window.add(chosen.ref, requests=1, errors=1)
        return
    m.request_seconds.labels(TASK, served.ref).observe(now - outcome.started)
    tokens = len(outcome.completion_ids)
    m.tokens.labels(TASK, served.ref, "prompt").inc(len(prompt_ids))
    m.tokens.labels(TASK, served.ref, "completion").inc(tokens)
    per_token_ms = None
    if outcome.first_token_at is not None:
        m.time_to_first_token.labels(TASK, served.ref).observe(outcome.first_token_at - outcome.started)
        if tokens > 1:
            per_token = (now - outcome.first_token_at) / (tokens - 1)
            m.time_per_output_token.labels(TASK, served.ref).observe(per_token)
            per_token_ms = per_token * 1000.0
    failed = served is not chosen or outcome.reason == "error"
    # The rollout's latency guard for /generate reads time per output token (the window's "latency").
    state.window.add(chosen.ref, latency_ms=per_token_ms, requests=1, errors=int(failed))
    if state.generate_shadow is not None and outcome.finished is not None and outcome.completion_ids:
        state.generate_shadow.offer(
            GenerateShadowItem(
                request_id=request_id,
                at=time.time(),
                served=served,
                prompt_ids=prompt_ids,
                finished=outcome.finished,
                latency_ms=(now - outcome.started) * 1000.0,
            ),
            teacher,
        )
