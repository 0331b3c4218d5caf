"""The app's OpenAPI contract, completed with what its routes cannot declare themselves: what a
middleware answers before any route runs, and schemes FastAPI declares only for dependencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

Schema = dict[str, Any]


def complete_openapi(app: FastAPI, complete: Callable[[Schema], None]) -> None:
    """Runs `complete` on the app's OpenAPI schema once, when it is first built (FastAPI keeps it in
    `app.openapi_schema` and serves it from there after)."""
    build = app.openapi

    def openapi() -> Schema:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        complete(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
