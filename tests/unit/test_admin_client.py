"""The admin client maps every failure to one AdminError with the gateway's own message (a gateway
played by an httpx.MockTransport: real requests, answered in process), and the CLI turns it into its
error lines and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from rollout.admin_client import AdminClient, AdminError

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, token: str = "secret") -> AdminClient:
    return AdminClient("http://gateway:8000/", token, transport=httpx.MockTransport(handler))


def refuse(status: int, kind: str, message: str) -> Handler:
    return lambda request: httpx.Response(status, json={"error": {"type": kind, "message": message}})


def test_a_refusal_carries_the_status_and_the_gateways_message() -> None:
    admin = client(refuse(422, "invalid_input", "weights must sum to 100, got 120"))
    with pytest.raises(AdminError) as refused:
        admin.set_traffic("classify", {"a@1": 60, "b@1": 60})
    assert refused.value.status == 422
    assert str(refused.value) == "PUT /admin/traffic/classify -> 422: weights must sum to 100, got 120"
    assert refused.value.detail == {"type": "invalid_input", "message": "weights must sum to 100, got 120"}


def test_an_error_body_that_is_not_the_gateways_shape_is_kept_as_it_came() -> None:
    admin = client(lambda request: httpx.Response(502, text="upstream connect error"))
    with pytest.raises(AdminError) as failed:
        admin.traffic()
    assert failed.value.status == 502 and failed.value.detail == "upstream connect error"
    assert str(failed.value) == "GET /admin/traffic -> 502: upstream connect error"


def test_an_unreachable_gateway_is_an_error_without_status() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(AdminError) as failed:
        client(unreachable).set_weights("classify", {"a@1": 100})
    assert failed.value.status is None
    assert str(failed.value) == "gateway unreachable at http://gateway:8000: [Errno 111] Connection refused"


def test_the_controllers_weights_are_forced_and_authorised() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"task": "a/b", "weights": {"a@1": 100}})

    client(record, token="tok").set_weights("a/b", {"a@1": 100})
    (request,) = seen
    assert request.method == "PUT"
    assert request.url.raw_path == b"/admin/traffic/a%2Fb?force=true"  # the task is one path segment
    assert request.headers["authorization"] == "Bearer tok"
    assert json.loads(request.content) == {"weights": {"a@1": 100}}


def test_a_task_never_rolled_out_has_no_phase_but_other_failures_raise() -> None:
    assert client(refuse(404, "not_found", "no rollout")).rollout_phase("classify") is None
    with pytest.raises(AdminError):
        client(refuse(500, "internal", "internal error")).rollout_phase("classify")


def test_the_cli_exits_2_when_it_cannot_reach_the_gateway(tmp_path: Path) -> None:
    # An address no transport can open: the connection fails before any socket is made.
    where = ["--url", "nowhere://gateway", "--token", "t", "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(app, ["traffic", "get", *where])
    assert result.exit_code == 2
    assert "cannot reach the gateway at nowhere://gateway" in result.output


def test_the_cli_asks_for_a_token_when_the_gateway_wrote_none(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["rollout", "status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "pass --token" in result.output
