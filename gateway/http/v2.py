"""Open Inference Protocol v2 (KServe, Triton) for classification: a thin adapter onto the one classify
request path (`classify_texts`), so routing, stickiness, pins, fallback, shadow, metrics and rollouts
apply as on /classify.

A model `name` is the task alias `classify` (routed by the traffic split) or a loaded model, pinned:
`classify-student@1`, `classify-student` with `/versions/1`, or `classify-student` alone (its latest
loaded version). The sticky routing key is the `x-kdgate-key` header, else the request's
`parameters.key`. Errors have v2's shape, `{"error": "<field>: <message>"}`.

Example (the official client)::

    client = tritonclient.http.InferenceServerClient(url="127.0.0.1:8000")
    text = tritonclient.http.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(["great service", "terrible delay"], dtype=object))
    result = client.infer("classify", [text])
    result.as_numpy("label"), result.as_numpy("probabilities")  # (2,), (2, C)
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from distill.registry import TaskKind
from gateway.errors import GatewayError, InvalidInput, NotFound, NotReady
from gateway.http.auth import ApiKeyRoute
from gateway.http.body import MAX_HEADER_CHARS, header, new_request_id, openapi
from gateway.http.classify import HEADERS, classify_texts, server_timing
from gateway.http.tensors import (
    INPUT,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
    model_metadata,
    read_infer,
    write_infer,
)
from gateway.serving.pool import LoadedModel
from gateway.state import GatewayState

PREFIX = "/v2"
HEADER_LENGTH = "inference-header-content-length"  # the binary tensor extension's JSON header size
TAGS: list[str | Enum] = ["open inference protocol v2"]
router = APIRouter(prefix=PREFIX, tags=TAGS)  # health and metadata: open, as in KServe
infer_router = APIRouter(prefix=PREFIX, tags=TAGS, route_class=ApiKeyRoute)  # inference: the API keys

# v2 answers bad input with 400 (gateway/errors.py's table says 422 for the native routes).
STATUS: dict[type[GatewayError], int] = {InvalidInput: 400}


def error_response(exc: GatewayError, headers: dict[str, str]) -> JSONResponse:
    """A domain error in v2's shape: `{"error": "<field>: <message>"}`."""
    message = f"{exc.field}: {exc.message}" if exc.field else exc.message
    return JSONResponse({"error": message}, status_code=STATUS.get(type(exc), exc.status), headers=headers)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def _resolve(state: GatewayState, name: str, version: str | None) -> tuple[str, LoadedModel | None]:
    """The task `name` addresses and the model it pins: a classify task's name alone is its alias,
    routed by its split (None); a model name (and `version`) pins it. 404 for anything else."""
    if not state.ready:
        raise NotReady("models are still loading")
    tasks = [t for t, kind in state.pool.tasks().items() if kind is TaskKind.CLASSIFY]
    if name in tasks and version is None:
        return name, None
    ref = name if version is None else f"{name}@{version}"
    models = list(state.pool.models.values())
    if "@" in ref:
        found = [m for m in models if m.ref == ref]
    else:  # a name alone: its latest loaded version, as Triton's default version policy
        found = sorted((m for m in models if m.manifest.name == name), key=lambda m: m.manifest.version)[-1:]
    if not found:
        aliases = ", ".join(sorted(tasks))
        raise NotFound(f"no loaded classify model {ref!r}; the task aliases are {aliases}", field="model")
    return found[0].manifest.task, found[0]


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="kdgate", version=request.app.version, extensions=["binary_tensor_data"])


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    if not _state(request).ready:
        raise NotReady("models are still loading")
    return {"ready": True}


# Each route has a form with `/versions/{version}` and one without (the latest loaded version, or the
# alias): two thin routes onto one function, so `version` is never a query parameter.


@router.get("/models/{name}", response_model=ModelMetadata)
async def metadata(request: Request, name: str) -> ModelMetadata:
    """Inputs and outputs; `parameters.labels` orders the columns of `probabilities`."""
    return _metadata(_state(request), name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata)
async def version_metadata(request: Request, name: str, version: str) -> ModelMetadata:
    return _metadata(_state(request), name, version)


def _metadata(state: GatewayState, name: str, version: str | None) -> ModelMetadata:
    task, pinned = _resolve(state, name, version)
    model = pinned or state.pool.teacher_of(task)
    if model is None:
        raise NotFound(f"no {task} teacher is loaded", field="model")
    versions = [] if pinned is None else [str(model.manifest.version)]
    return model_metadata(name, versions, model.manifest.labels)


@router.get("/models/{name}/ready")
async def model_ready(request: Request, name: str) -> dict[str, object]:
    _resolve(_state(request), name, None)
    return {"name": name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
async def version_ready(request: Request, name: str, version: str) -> dict[str, object]:
    _resolve(_state(request), name, version)
    return {"name": name, "version": version, "ready": True}


INFER_HEADERS = {
    **HEADERS,
    HEADER_LENGTH: "Binary tensor extension: the size of the JSON header before the tensors' bytes.",
}
INFER_DOCS: dict[str, Any] = {
    "response_model": InferResponse,
    "openapi_extra": openapi(InferRequest, INFER_HEADERS),
}


@infer_router.post("/models/{name}/infer", **INFER_DOCS)
async def infer(request: Request, name: str) -> Response:
    """Classifies the texts of the BYTES input `text` ([N] or [N, 1]) into `label` (BYTES [N]) and
    `probabilities` (FP32 [N, C]); `outputs` picks some of them by name. The response names the model
    that served (`model_name`, `model_version`) and echoes `id`."""
    return await _infer(request, name, None)


@infer_router.post("/models/{name}/versions/{version}/infer", **INFER_DOCS)
async def version_infer(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    entered = time.perf_counter()
    state = _state(request)
    task, model = _resolve(state, name, version)
    length = header(request, HEADER_LENGTH)
    if length is not None and not length.isdigit():
        raise InvalidInput(f"must be a byte count, got {length!r}", field=HEADER_LENGTH)
    body, texts = read_infer(await request.body(), None if length is None else int(length))
    request_id = body.id or header(request, "x-request-id") or new_request_id()
    request.state.request_id = request_id  # error responses carry it too (app.py)
    key = header(request, "x-kdgate-key") or _parameter_key(body)
    pinned = model.ref if model is not None else header(request, "x-kdgate-model")
    done = await classify_texts(state, texts, request_id, key, pinned, field=INPUT, task=task)
    served = done.served.manifest
    content, json_length = write_infer(
        body, served.name, str(served.version), request_id, served.labels, done.probabilities
    )
    headers = {
        "x-request-id": request_id,
        "x-kdgate-model": served.ref,
        "server-timing": server_timing(done.batched, time.perf_counter() - entered, done.fell_back),
    }
    if json_length is None:
        return Response(content, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(json_length)
    return Response(content, media_type="application/octet-stream", headers=headers)


def _parameter_key(body: InferRequest) -> str | None:
    key = body.parameters.get("key")
    if key is not None and (not isinstance(key, str) or len(key) > MAX_HEADER_CHARS):
        raise InvalidInput(f"must be a string of at most {MAX_HEADER_CHARS} characters", "parameters.key")
    return key
