"""OpenAI-compatible generation: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.
A thin adapter onto the one generation request path (gateway/http/generation.py), so routing,
stickiness, pins, fallback, shadow, metrics and rollouts apply as on /generate.

`model` is the task alias `generate` (routed by the traffic split) or a loaded model, pinned
(`generate-student@2`, or a name alone for its latest loaded version); `user`, else the `x-kdgate-key`
header, is the sticky routing key. Errors have OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`.

Example (the official client)::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="generate", messages=[{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from distill.registry import TaskKind
from gateway.errors import (
    GatewayError,
    InvalidInput,
    MalformedRequest,
    ModelUnavailable,
    NotFound,
    NotReady,
    Unauthorized,
)
from gateway.http.auth import ApiKeyRoute
from gateway.http.body import MAX_HEADER_CHARS, new_request_id
from gateway.http.generation import (
    Generation,
    GenerationRequest,
    check_generation_limits,
    start_generation_request,
)
from gateway.http.openai_schemas import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from gateway.serving.generation_events import Delta, Finished, GenerationParams, TokenLogprob
from gateway.state import GatewayState

PREFIX = "/v1"
router = APIRouter(prefix=PREFIX, tags=["openai"], route_class=ApiKeyRoute)

UNSUPPORTED = {
    "n": "only n=1 is served",
    "logit_bias": "logit_bias is not supported",
    "stop": "at most 4 stop sequences",
    "tools": "tools (function calling) are not supported",
    "response_format": "only response_format type 'text' is supported",
    "top_logprobs": "top_logprobs needs logprobs: true",
    "prompt": "prompt must be a string, or a list of exactly one string",
    "echo": "echo is not supported",
    "suffix": "suffix is not supported",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def error_response(exc: GatewayError, headers: dict[str, str]) -> JSONResponse:
    """A domain error in OpenAI's shape; bad input is a 400 there, whatever its status here."""
    status = 400 if isinstance(exc, InvalidInput | MalformedRequest) else exc.status
    error = {
        "message": exc.message,
        "type": ERROR_TYPES.get(status, "server_error"),
        "param": exc.field,
        "code": _code(exc),
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _code(exc: GatewayError) -> str:
    if isinstance(exc, NotFound) and exc.field == "model":
        return "model_not_found"
    return "invalid_api_key" if isinstance(exc, Unauthorized) else exc.kind


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def generate_tasks(state: GatewayState) -> list[str]:
    """The generate tasks' names: each is a `model` alias routed by its task's split."""
    return sorted(t for t, kind in state.pool.tasks().items() if kind is TaskKind.GENERATE)


def resolve(state: GatewayState, model: str) -> tuple[str, str | None]:
    """The task `model` addresses and the model ref it pins (None for a task alias); 404 naming what is
    served otherwise."""
    if not state.ready:
        raise NotReady("models are still loading")
    if model in generate_tasks(state):
        return model, None
    lms = state.pool.lms
    if model in lms:
        return lms[model].manifest.task, model
    versions = sorted((m.manifest.version, ref) for ref, m in lms.items() if m.manifest.name == model)
    if versions:  # a name alone: its latest loaded version
        ref = versions[-1][1]
        return lms[ref].manifest.task, ref
    served = [*generate_tasks(state), *sorted(lms)]
    raise NotFound(f"the model {model!r} does not exist; served: {', '.join(served)}", field="model")


def _refuse_unsupported(body: OpenAIRequest) -> None:
    field = body.unsupported()
    if field is not None:
        raise InvalidInput(UNSUPPORTED[field], field=field)


async def _start(
    state: GatewayState,
    body: OpenAIRequest,
    prompt: str | None,
    messages: list[dict[str, str]] | None,
    max_tokens: int,
    key_header: str | None,
) -> Generation:
    task, pinned = resolve(state, body.model)
    params = GenerationParams(
        max_tokens, body.temperature, body.top_p, body.stops(), body.seed, body.logprob_count()
    )
    request_id = new_request_id()
    key = body.user or key_header
    asked = GenerationRequest(prompt, messages, params, request_id, key, pinned, "model", task)
    return await start_generation_request(state, asked)


def _usage(generation: Generation, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = len(generation.prompt_ids)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    x_kdgate_key: str | None = Header(None, max_length=MAX_HEADER_CHARS),
) -> Any:
    state = _state(request)
    _refuse_unsupported(body)
    messages = [m.as_template_message() for m in body.messages]
    texts = {f"messages[{i}].content": m["content"] for i, m in enumerate(messages)}
    check_generation_limits(state, body.token_budget(), texts, "messages")
    generation = await _start(state, body, None, messages, body.token_budget(), x_kdgate_key)
    reply = Reply("chatcmpl", "chat.completion", generation)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return reply.streaming(_chat_chunks(reply, usage, bool(body.logprobs)))
    outcome = await generation.complete(request.is_disconnected)
    message = {"role": "assistant", "content": outcome.text}
    logprobs = _chat_logprobs(outcome.finished.logprobs) if body.logprobs and outcome.finished else None
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": outcome.reason}
    return reply.body([choice], _usage(generation, len(outcome.completion_ids)))


@router.post("/completions")
async def completions(
    body: CompletionRequest,
    request: Request,
    x_kdgate_key: str | None = Header(None, max_length=MAX_HEADER_CHARS),
) -> Any:
    state = _state(request)
    _refuse_unsupported(body)
    prompt = body.text() or ""
    check_generation_limits(state, body.token_budget(), {"prompt": prompt}, "prompt")
    generation = await _start(state, body, prompt, None, body.token_budget(), x_kdgate_key)
    reply = Reply("cmpl", "text_completion", generation)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return reply.streaming(_completion_chunks(reply, usage, body.logprobs is not None))
    outcome = await generation.complete(request.is_disconnected)
    asked = body.logprobs is not None and outcome.finished is not None
    logprobs = _completion_logprobs(outcome.finished.logprobs) if asked and outcome.finished else None
    choice = {"index": 0, "text": outcome.text, "logprobs": logprobs, "finish_reason": outcome.reason}
    return reply.body([choice], _usage(generation, len(outcome.completion_ids)))


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """The generate tasks' aliases and every loaded generate model, in OpenAI's list shape."""
    state = _state(request)
    created = int(time.time())
    entries = [
        {"id": task, "object": "model", "created": created, "owned_by": "kdgate"}
        for task in generate_tasks(state)
    ]
    for ref, loaded in sorted(state.pool.lms.items()):
        created_at = loaded.manifest.lineage.created
        entries.append({"id": ref, "object": "model", "created": _epoch(created_at), "owned_by": "kdgate"})
    return {"object": "list", "data": entries}


def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0


class Reply:
    """One answer's identity (id, object, created, the model that served) and its two forms."""

    def __init__(self, id_prefix: str, obj: str, generation: Generation) -> None:
        self.id = f"{id_prefix}-{generation.request_id}"
        self.object = obj
        self.created = int(time.time())
        self.generation = generation

    def envelope(self, obj: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj or self.object,
            "created": self.created,
            "model": self.generation.served.ref,
        }

    def body(self, choices: list[dict[str, Any]], usage: dict[str, int]) -> JSONResponse:
        headers = {"x-request-id": self.generation.request_id, "x-kdgate-model": self.generation.served.ref}
        return JSONResponse({**self.envelope(), "choices": choices, "usage": usage}, headers=headers)

    def streaming(self, chunks: AsyncIterator[str]) -> StreamingResponse:
        headers = {"x-request-id": self.generation.request_id, "x-kdgate-model": self.generation.served.ref}
        background = BackgroundTask(self.generation.end)
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers=headers, background=background
        )


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _failed(reply: Reply) -> str:
    served = reply.generation.served.ref
    error = {"message": f"{served} failed while generating", "type": "server_error", "param": None}
    return _sse({"error": {**error, "code": ModelUnavailable.kind}})


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """The chat shape: per token its entry and its `top_logprobs` entries."""
    content = [{**_entry(t.token, t.logprob), "top_logprobs": [_entry(*a) for a in t.top]} for t in tokens]
    return {"content": content, "refusal": None}


def _completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, `top_logprobs` as token → logprob maps, and each
    token's character offset in the completion (from `offset`, for a stream's later chunks)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


async def _chat_chunks(reply: Reply, include_usage: bool, logprobs: bool) -> AsyncIterator[str]:
    chunk = reply.envelope("chat.completion.chunk")
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield _sse({**chunk, "choices": [first]})
    async for event in reply.generation.events():
        if isinstance(event, Delta):
            delta: dict[str, Any] = {"index": 0, "delta": {"content": event.text}, "finish_reason": None}
            if logprobs:
                delta["logprobs"] = _chat_logprobs(event.logprobs)
            yield _sse({**chunk, "choices": [delta]})
        elif isinstance(event, Finished):
            yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": event.reason}]})
            if include_usage:
                yield _sse(
                    {**chunk, "choices": [], "usage": _usage(reply.generation, len(event.completion_ids))}
                )
            yield "data: [DONE]\n\n"
        else:
            yield _failed(reply)


async def _completion_chunks(reply: Reply, include_usage: bool, logprobs: bool) -> AsyncIterator[str]:
    chunk = reply.envelope()
    offset = 0
    async for event in reply.generation.events():
        if isinstance(event, Delta):
            shown = _completion_logprobs(event.logprobs, offset) if logprobs else None
            offset += sum(len(t.token) for t in event.logprobs)
            piece = {"index": 0, "text": event.text, "logprobs": shown, "finish_reason": None}
            yield _sse({**chunk, "choices": [piece]})
        elif isinstance(event, Finished):
            last = {"index": 0, "text": "", "logprobs": None, "finish_reason": event.reason}
            yield _sse({**chunk, "choices": [last]})
            if include_usage:
                yield _sse(
                    {**chunk, "choices": [], "usage": _usage(reply.generation, len(event.completion_ids))}
                )
            yield "data: [DONE]\n\n"
        else:
            yield _failed(reply)
