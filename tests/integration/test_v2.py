"""Open Inference Protocol v2 for /classify, spoken by the official `tritonclient.http` client (and raw
httpx for the JSON shapes) to one real gateway with the real (tiny) models."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import RunningServer, metric_sum, start_server

TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"
TEXTS = ["I love this new phone", "the delay was terrible", "meh"]


@pytest.fixture(scope="module")
def server(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One gateway for the module (its tests leave the traffic split as they found it), with copies of
    the student that always fail and that are slow, and room for two requests in flight."""
    state = tmp_path_factory.mktemp("v2") / "state"
    shutil.copytree(built_state, state, copy_function=os.link)
    register_fault_model(Registry(state), FaultSpec(wraps=STUDENT, error_rate=1.0), name="classify-broken")
    register_fault_model(Registry(state), FaultSpec(wraps=STUDENT, latency_ms=300), name="classify-slow")
    running = start_server(state, max_in_flight=2, student_timeout_ms=5000)
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def _texts(texts: list[str], name: str = "text", shape: list[int] | None = None) -> triton.InferInput:
    tensor = triton.InferInput(name, shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape or [len(texts)]))
    return tensor


def test_health_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "kdgate"
    assert client.is_model_ready("classify") and client.is_model_ready("classify-student", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("classify")
    labels = meta["parameters"]["labels"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
    ]
    assert client.get_model_metadata("classify-student", "1")["versions"] == ["1"]


def test_infer_on_the_alias_answers_as_classify_does(server: RunningServer, client) -> None:
    result = client.infer("classify", [_texts(TEXTS)], request_id="req-1", headers={"x-kdgate-key": "u1"})
    response = result.get_response()
    served = f"{response['model_name']}@{response['model_version']}"
    assert response["id"] == "req-1" and served == TEACHER  # the default split: all on the teacher
    labels, probs = result.as_numpy("label"), result.as_numpy("probabilities")
    assert labels.shape == (3,) and probs.shape[0] == 3 and probs.dtype == np.float32
    native = httpx.post(f"{server.url}/classify", json={"texts": TEXTS}, headers={"x-kdgate-model": served})
    for label, row, expected in zip(labels, probs, native.json()["results"], strict=True):
        assert label.decode() == expected["label"]
        assert np.allclose(row, list(expected["probabilities"].values()), atol=1e-6)


def test_a_pinned_version_serves_and_is_named(client) -> None:
    for name, version in (("classify-student", "1"), ("classify-student@1", ""), ("classify-student", "")):
        response = client.infer(name, [_texts(["great"])], model_version=version).get_response()
        assert (response["model_name"], response["model_version"]) == ("classify-student", "1")
    assert not client.is_model_ready("classify-student", "9")
    column = client.infer("classify-student", [_texts(["a", "b"], shape=[2, 1])], model_version="1")
    assert column.as_numpy("label").shape == (2,)  # [N, 1] texts give [N] labels


def test_requested_outputs_only_in_json_or_binary(client) -> None:
    for binary in (True, False):
        wanted = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("classify", [_texts(TEXTS)], outputs=wanted)
        assert result.as_numpy("label") is None
        probs = result.as_numpy("probabilities").reshape(3, -1)
        assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
        sent = result.get_output("probabilities")
        assert sent.get("parameters", {}).get("binary_data_size") == (4 * probs.size if binary else None)


def test_sticky_key_follows_the_split_as_on_classify(server: RunningServer, client) -> None:
    split = f"{server.url}/admin/traffic/classify"
    httpx.put(split, json={"weights": {STUDENT: 50, TEACHER: 50}}, headers=server.admin_headers())
    try:
        for key in (f"user-{i}" for i in range(12)):
            response = client.infer("classify", [_texts(["hi"])], parameters={"key": key}).get_response()
            native = httpx.post(f"{server.url}/classify", json={"text": "hi"}, headers={"x-kdgate-key": key})
            assert f"{response['model_name']}@{response['model_version']}" == native.headers["x-kdgate-model"]
    finally:
        httpx.put(split, json={"weights": {TEACHER: 100}}, headers=server.admin_headers())


def test_a_failing_student_falls_back_to_the_teacher_and_is_counted(server: RunningServer, client) -> None:
    response = client.infer("classify-broken", [_texts(["hello"])]).get_response()
    assert f"{response['model_name']}@{response['model_version']}" == TEACHER
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_sum(metrics, "kdgate_fallbacks_total", model="classify-broken@1", reason="error") >= 1
    assert metric_sum(metrics, "kdgate_requests_total", task="classify", model=TEACHER, code="200") >= 1


@pytest.mark.parametrize(
    ("tensor", "field"),
    [
        (lambda: _texts(["hi"], name="words"), "inputs[0].name"),
        (lambda: _texts(["hi", "there"], shape=[1, 2]), "inputs[0].shape"),
        (lambda: _texts([" "]), "text"),
    ],
)
def test_bad_tensors_are_400_naming_the_field(client, tensor, field: str) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classify", [tensor()])
    assert raised.value.status() == "400" and field in raised.value.message()


def test_wrong_datatype_is_400_and_unknown_model_404(client) -> None:
    numbers = triton.InferInput("text", [2], "FP32")
    numbers.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classify", [numbers])
    assert raised.value.status() == "400" and "inputs[0].datatype" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("nope", [_texts(["hi"])])
    assert raised.value.status() == "404" and "'nope'" in raised.value.message()


def test_a_burst_over_the_in_flight_bound_gets_429_in_v2_shape(server: RunningServer) -> None:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            infer = "/v2/models/classify-slow/infer"
            return await asyncio.gather(*(http.post(infer, json={"inputs": [tensor]}) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = Counter(r.status_code for r in responses)
    assert codes[429] >= 1 and codes[200] >= 1 and set(codes) <= {200, 429}, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert "in flight" in refused.json()["error"]


def test_json_shapes_over_raw_http(server: RunningServer) -> None:
    url = f"{server.url}/v2/models/classify-student/versions/1/infer"
    tensor = {"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}
    r = httpx.post(url, json={"id": "abc", "inputs": [tensor]})
    assert (
        r.status_code == 200 and r.headers["x-kdgate-model"] == STUDENT and r.headers["x-request-id"] == "abc"
    )
    body = r.json()
    assert {k: body[k] for k in ("model_name", "model_version", "id")} == {
        "model_name": "classify-student",
        "model_version": "1",
        "id": "abc",
    }
    label, probs = body["outputs"]
    assert label["name"] == "label" and label["datatype"] == "BYTES" and label["shape"] == [2]
    assert all(isinstance(v, str) for v in label["data"])
    n_labels = probs["shape"][1]
    assert (
        probs["datatype"] == "FP32" and probs["shape"] == [2, n_labels] and len(probs["data"]) == 2 * n_labels
    )
    for request, status, field in (
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [{**tensor, "data": [1, 2]}]}, 400, "inputs[0].data"),
        ({"inputs": [tensor], "outputs": [{"name": "logits"}]}, 400, "outputs[0].name"),
        ({"id": "a\nb", "inputs": [tensor]}, 400, "id"),
    ):
        refused = httpx.post(url, json=request)
        assert refused.status_code == status and refused.json()["error"].startswith(field + ":"), refused.text
    malformed = httpx.post(url, content=b"{not json")
    assert malformed.status_code == 400 and set(malformed.json()) == {"error"}
    unknown = httpx.get(f"{server.url}/v2/models/classify-student@9")
    assert unknown.status_code == 404 and "classify-student@9" in unknown.json()["error"]
    no_route = httpx.get(f"{server.url}/v2/models/classify/nothing")
    assert no_route.status_code == 404 and set(no_route.json()) == {"error"}
    assert httpx.get(f"{server.url}/nothing").json() == {"detail": "Not Found"}  # the native shape is its own
    native = httpx.post(f"{server.url}/classify", json={"text": " "})
    assert native.status_code == 422 and native.json()["error"]["field"] == "text"


def test_routes_are_in_the_openapi_contract(server: RunningServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}"} <= set(paths)
