"""`DirectRoutes` serves its routes as FastAPI would, without FastAPI's router: path parameters, the
API key of an `ApiKeyRoute`, the app's exception handlers (and its handler of last resort); anything
else goes on to the app; a route whose FastAPI parameters or dependencies would be skipped is refused."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from gateway.errors import GatewayError
from gateway.http.auth import ApiKeyRoute
from gateway.http.direct import DirectRoutes


class Refused(ValueError):
    pass


class RefusedHarder(Refused):
    pass


router = APIRouter(route_class=ApiKeyRoute)


@router.post("/items/{name}")
async def item(request: Request, name: str) -> Response:
    if name == "refused":
        raise RefusedHarder(name)
    if name == "broken":
        raise RuntimeError("a bug")
    # "endpoint" is what Starlette's router puts in the scope: absent, nothing routed this request
    routed = "endpoint" in request.scope
    body = {
        "name": name,
        "params": request.path_params,
        "body": (await request.body()).decode(),
        "routed": routed,
    }
    return JSONResponse(body)


@router.get("/items/{name}")
async def item_get(request: Request, name: str) -> Response:
    return JSONResponse({"routed": "endpoint" in request.scope})


def make_app(api_keys: list[str]) -> FastAPI:
    app = FastAPI()
    app.state.gw = SimpleNamespace(settings=SimpleNamespace(api_keys=api_keys))  # what check_api_key reads
    app.include_router(router)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"refused": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def last_resort(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal"}, status_code=500)

    app.add_middleware(DirectRoutes, routes=[r for r in router.routes if "POST" in getattr(r, "methods", ())])
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    headers = {"authorization": "Bearer key"}
    with TestClient(make_app(api_keys=["key"]), raise_server_exceptions=False, headers=headers) as client:
        yield client


def test_a_direct_route_gets_its_path_parameters_and_body_without_the_router(client: TestClient) -> None:
    r = client.post("/items/abc", content=b"payload")
    assert r.status_code == 200
    assert r.json() == {"name": "abc", "params": {"name": "abc"}, "body": "payload", "routed": False}


def test_other_methods_and_paths_go_on_to_the_app(client: TestClient) -> None:
    assert client.get("/items/abc").json() == {"routed": True}
    assert client.post("/items/abc/more").status_code == 404  # FastAPI's, as before
    assert client.put("/items/abc").status_code == 405


def test_the_api_key_is_checked_before_the_handler_runs(client: TestClient) -> None:
    for headers in ({"authorization": "Bearer wrong"}, {"authorization": ""}):
        r = client.post("/items/refused", headers=headers)  # the handler would have answered 409
        assert (r.status_code, r.json()["error"]["type"]) == (401, "unauthorized")


def test_the_apps_handler_of_an_exceptions_class_or_base_answers(client: TestClient) -> None:
    r = client.post("/items/refused")
    assert (r.status_code, r.json()) == (409, {"refused": "refused"})


def test_an_exception_no_handler_takes_reaches_the_handler_of_last_resort(client: TestClient) -> None:
    r = client.post("/items/broken")
    assert (r.status_code, r.json()) == (500, {"error": "internal"})


def test_a_route_with_fastapi_parameters_or_dependencies_is_refused() -> None:
    other = APIRouter()

    @other.post("/with-body")
    async def with_body(request: Request, limit: int) -> Response:
        return Response()

    async def dependency() -> None:
        return None

    @other.post("/with-dependency", dependencies=[Depends(dependency)])
    async def with_dependency(request: Request) -> Response:
        return Response()

    for route in other.routes:
        with pytest.raises(TypeError, match=route.path):  # type: ignore[attr-defined]
            DirectRoutes(FastAPI(), routes=[route])


def test_an_unhandled_exception_goes_on_to_the_server_as_from_fastapi() -> None:
    """Starlette answers it with the handler of last resort and then raises it again, for the server
    to log: the direct path must not swallow it in that handler itself."""
    with TestClient(make_app(api_keys=[])) as client, pytest.raises(RuntimeError, match="a bug"):
        client.post("/items/broken")


def test_under_a_proxys_prefix_the_routes_match_past_it() -> None:
    app = make_app(api_keys=[])
    with TestClient(app, root_path="/api") as client:
        assert client.post("/api/items/abc").json()["routed"] is False
        assert client.post("/apix/items/abc").status_code == 404  # not the prefix: FastAPI's 404
