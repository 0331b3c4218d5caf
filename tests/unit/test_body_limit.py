"""`BodyLimit` refuses a body over the limit, declared or chunked, in the shape `refuse` gives, and hands
any other body on whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from gateway.errors import GatewayError
from gateway.http.body_limit import BodyLimit, document_body_limit

LIMIT = 1000
calls: list[int] = []  # body sizes the app was called with


def refuse(request: Request, error: GatewayError) -> JSONResponse:
    return JSONResponse({"shape": "test", **error.body()}, status_code=error.status)


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()

    @app.post("/echo", openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}})
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        calls.append(len(body))
        return JSONResponse({"size": len(body)})

    @app.get("/size")
    async def size() -> dict[str, int]:
        return {"size": 0}

    app.add_middleware(BodyLimit, max_bytes=LIMIT, refuse=refuse)
    document_body_limit(app, LIMIT)
    calls.clear()
    with TestClient(app) as client:
        yield client


def chunks(sizes: list[int]) -> Iterator[bytes]:
    yield from (b"x" * n for n in sizes)


def test_a_body_up_to_the_limit_is_handed_on_whole(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * LIMIT).json() == {"size": LIMIT}
    assert client.post("/echo", content=chunks([400, 400, 200])).json() == {"size": LIMIT}  # chunked
    assert calls == [LIMIT, LIMIT]


@pytest.mark.parametrize("content", [b"x" * (LIMIT + 1), "chunked"], ids=["declared", "chunked"])
def test_a_body_over_the_limit_is_refused_413_in_the_given_shape_and_the_app_never_runs(
    client: TestClient, content: bytes | str
) -> None:
    body = chunks([600, 600]) if content == "chunked" else content
    r = client.post("/echo", content=body)
    assert r.status_code == 413
    assert r.json()["shape"] == "test"
    assert r.json()["error"]["type"] == "payload_too_large" and r.json()["error"]["field"] == "body"
    assert str(LIMIT) in r.json()["error"]["message"]
    assert calls == []


def test_requests_without_a_body_pass(client: TestClient) -> None:
    assert client.post("/echo").json() == {"size": 0}


def test_the_413_is_in_the_contract_of_every_operation_that_takes_a_body(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert str(LIMIT) in paths["/echo"]["post"]["responses"]["413"]["description"]
    assert "413" not in paths["/size"]["get"]["responses"]
