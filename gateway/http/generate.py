"""POST /generate: kdgate's own generation API, an adapter onto the one generation request path
(gateway/http/generation.py): its body, its limits, its JSON answer or its server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from distill.registry import TaskKind
from gateway.errors import NotReady
from gateway.http.auth import ApiKeyRoute
from gateway.http.body import MAX_HEADER_CHARS, new_request_id
from gateway.http.generation import (
    TASK,
    Generation,
    GenerationRequest,
    check_generation_limits,
    start_generation_request,
)
from gateway.http.schemas import GenerateRequest, GenerateResponse, Usage
from gateway.serving.generation_events import Delta, Finished, GenerationParams
from gateway.state import GatewayState

router = APIRouter(route_class=ApiKeyRoute)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def check_limits(body: GenerateRequest, state: GatewayState) -> None:
    if body.messages is not None:
        texts = {f"messages[{i}].content": m.content for i, m in enumerate(body.messages)}
    else:
        texts = {"prompt": body.prompt or ""}
    check_generation_limits(
        state, body.max_tokens, texts, "messages" if body.messages is not None else "prompt"
    )


def _sse(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@dataclass(frozen=True)
class RoutingHeaders:
    key: str | None  # x-kdgate-key: one key stays on one model while the split holds
    model: str | None  # x-kdgate-model: pin a loaded model of the task
    request_id: str | None  # x-request-id: to echo and log


async def routing_headers(  # async: FastAPI would run a plain def in its thread pool, per request
    x_kdgate_key: str | None = Header(None, max_length=MAX_HEADER_CHARS),
    x_kdgate_model: str | None = Header(None, max_length=MAX_HEADER_CHARS),
    x_request_id: str | None = Header(None, max_length=MAX_HEADER_CHARS),
) -> RoutingHeaders:
    return RoutingHeaders(x_kdgate_key, x_kdgate_model, x_request_id)


GENERATE_DOCS: dict[str, Any] = {
    "response_model": GenerateResponse,
    "tags": ["inference"],
    "responses": {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
}


@router.post("/generate", **GENERATE_DOCS)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    headers: RoutingHeaders = Depends(routing_headers),
) -> GenerateResponse | StreamingResponse:
    """Generates a completion of `prompt`, or the assistant's reply to chat `messages`, with the
    bundled task `generate`.

    With `stream: true` the answer is server-sent events: `data: {"text": ...}` per delta, then
    `data: {"finish_reason": ..., "usage": ...}` and `data: [DONE]`. A client that disconnects stops
    the generation at its next token.
    """
    return await _generate(body, request, response, headers, TASK)


@router.post("/generate/{task}", **GENERATE_DOCS)
async def generate_task(
    body: GenerateRequest,
    request: Request,
    response: Response,
    task: str,
    headers: RoutingHeaders = Depends(routing_headers),
) -> GenerateResponse | StreamingResponse:
    """Generates with the generate task `task` (an imported one; or `generate`), as `/generate` does.
    An unknown task is a 404 naming the served ones."""
    return await _generate(body, request, response, headers, task)


async def _generate(
    body: GenerateRequest, request: Request, response: Response, headers: RoutingHeaders, task: str
) -> GenerateResponse | StreamingResponse:
    state = _state(request)
    request_id = headers.request_id or new_request_id()
    request.state.request_id = request_id  # error responses carry it too (app.py)
    response.headers["x-request-id"] = request_id
    if task != TASK:  # the bundled task answers 503 until its models are built, not 404
        state.served_task(task, TaskKind.GENERATE)
    if not state.ready:
        raise NotReady("models are still loading")
    check_limits(body, state)
    params = GenerationParams(
        body.max_tokens, body.temperature, body.top_p, tuple(body.stop or ()), body.seed
    )
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    asked = GenerationRequest(
        body.prompt, messages, params, request_id, headers.key, headers.model, task=task
    )
    generation = await start_generation_request(state, asked)
    if body.stream:
        sent = {"x-request-id": request_id, "x-kdgate-model": generation.served.ref}
        stream = _stream(generation)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers=sent, background=BackgroundTask(generation.end)
        )
    outcome = await generation.complete(request.is_disconnected)
    response.headers["x-kdgate-model"] = outcome.served.ref
    usage = Usage(prompt_tokens=len(generation.prompt_ids), completion_tokens=len(outcome.completion_ids))
    return GenerateResponse(
        model=outcome.served.ref,
        request_id=request_id,
        text=outcome.text,
        finish_reason=outcome.reason,
        usage=usage,
    )


async def _stream(generation: Generation) -> AsyncIterator[str]:
    served = generation.outcome
    async for event in generation.events():
        if isinstance(event, Delta):
            yield _sse({"text": event.text})
        elif isinstance(event, Finished):
            usage = {
                "prompt_tokens": len(generation.prompt_ids),
                "completion_tokens": len(event.completion_ids),
            }
            yield _sse({"finish_reason": event.reason, "usage": usage, "model": served.served.ref})
            yield "data: [DONE]\n\n"
        else:
            error = {"type": "model_unavailable", "message": f"{served.served.ref} failed"}
            yield _sse({"error": error})
