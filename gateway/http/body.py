"""Reading a hot endpoint's body and headers without FastAPI's parameter machinery.

Why: for a cheap request FastAPI's dependency solving is a large share of the CPU (about a fifth of
/classify's with a no-op model): `Header(...)` parameters go through its field-annotation checks on
every request, and a JSON body is decoded by `json.loads` and then validated by pydantic in Python
mode. Here pydantic-core validates the raw bytes at once and headers are dictionary lookups. The
serving process is bound to one core by the GIL, so every microsecond here is one the model or the
next request does not get. Validation
errors take the same path as FastAPI's (`RequestValidationError`, mapped to a 4xx naming the field in
app.py), and `openapi(...)` declares the body and headers, so /docs still shows them.

Example (in a route)::

    body = await read_json_body(request, ClassifyRequest)
    key = header(request, "x-kdgate-key")
"""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidInput

MAX_HEADER_CHARS = 256
M = TypeVar("M", bound=BaseModel)


async def read_json_body(request: Request, model: type[M]) -> M:
    """The request body as `model`, parsed and validated from the raw bytes (any content type)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:  # locations as FastAPI gives them: under "body"
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def header(request: Request, name: str) -> str | None:
    """Header `name` (lower case), refused when longer than MAX_HEADER_CHARS."""
    value = request.headers.get(name)
    if value is not None and len(value) > MAX_HEADER_CHARS:
        raise InvalidInput(f"header longer than {MAX_HEADER_CHARS} characters ({len(value)})", field=name)
    return value


def new_request_id() -> str:
    """The id of a request whose caller gave none: 32 random hex digits, as `uuid4().hex` looks, without
    building a `uuid.UUID` on every request (its constructor is pure Python)."""
    return secrets.token_hex(16)


def openapi(body: type[BaseModel], headers: dict[str, str]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads `body` and `headers` (name -> description) itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body.model_json_schema()}},
        },
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": description,
                "schema": {"type": "string", "maxLength": MAX_HEADER_CHARS},
            }
            for name, description in headers.items()
        ],
    }
