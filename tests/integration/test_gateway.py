"""The /classify request path and the operator API on a real uvicorn with the real (tiny) models."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from distill.classify.evaluate import softmax
from distill.classify.runner import load_runner
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import RunningServer, metric_sum, start_server

TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"
BODY_LIMIT = 16384


@pytest.fixture(scope="module")
def shared(module_state_dir: Path) -> Iterator[RunningServer]:
    """One server for the tests whose requests change nothing it holds (answers, refusals, reads): the
    start and stop of a server of their own would be most of their time. A test that changes state, or
    needs other settings, starts its own with `serve`."""
    server = start_server(module_state_dir, max_texts=8, max_text_chars=100, max_body_bytes=BODY_LIMIT)
    yield server
    server.stop()


def test_single_text_is_classified_with_model_and_request_id(shared) -> None:
    server = shared
    response = httpx.post(f"{server.url}/classify", json={"text": "I love my new self-driving car"})
    assert response.status_code == 200
    body = response.json()
    (result,) = body["results"]
    assert set(result["probabilities"]) == {"negative", "neutral", "positive"}
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["model"] == response.headers["x-kdgate-model"] == TEACHER  # default split: teacher 100
    assert body["request_id"] == response.headers["x-request-id"]
    entries = re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"])
    timing = {name: float(ms) for name, ms in entries}
    assert set(timing) == {"queue", "model", "handler"}
    assert 0 < timing["model"] <= timing["handler"] and 0 <= timing["queue"] <= timing["handler"]


def server_timing_names(header: str) -> list[str]:
    return [entry.split(";")[0].strip() for entry in header.split(",")]


def test_batch_is_classified_in_order(shared) -> None:
    server = shared
    texts = ["terrible, I hate it", "it is a car", "wonderful news, so happy"]
    batch = httpx.post(f"{server.url}/classify", json={"texts": texts}).json()["results"]
    singles = [httpx.post(f"{server.url}/classify", json={"text": t}).json()["results"][0] for t in texts]
    assert [r["label"] for r in batch] == [r["label"] for r in singles]
    for b, s in zip(batch, singles, strict=True):
        for label in b["probabilities"]:
            assert b["probabilities"][label] == pytest.approx(s["probabilities"][label], abs=1e-4)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({}, 422, "body"),
        ({"text": ""}, 422, "text"),
        ({"text": "   "}, 422, "text"),
        ({"text": 5}, 422, "text"),
        ({"texts": "not a list"}, 422, "texts"),
        ({"texts": []}, 422, "texts"),
        ({"texts": ["ok", ""]}, 422, "texts[1]"),
        ({"texts": ["ok", 3]}, 422, "texts.1"),
        ({"texts": ["x"] * 9}, 422, "texts"),
        ({"text": "x" * 101}, 422, "text"),
        ({"text": "a", "texts": ["b"]}, 422, "body"),
        ({"text": "a", "colour": "red"}, 422, "colour"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(shared, payload, status, field) -> None:
    server = shared
    response = httpx.post(f"{server.url}/classify", json=payload, headers={"x-request-id": "req-7"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert response.headers["x-request-id"] == "req-7"  # the caller can still correlate the refusal


@pytest.mark.parametrize("name", ["x-kdgate-key", "x-kdgate-model", "x-request-id"])
def test_an_overlong_header_is_a_422_naming_it(shared, name: str) -> None:
    server = shared
    response = httpx.post(f"{server.url}/classify", json={"text": "hi"}, headers={name: "k" * 257})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == name


def test_malformed_json_is_a_400(shared) -> None:
    server = shared
    response = httpx.post(
        f"{server.url}/classify",
        content=b'{"text": "unterminated',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "malformed_request"


def test_a_body_over_the_byte_limit_is_a_413_in_each_protocols_shape(shared) -> None:
    server = shared
    big = "x" * BODY_LIMIT
    with httpx.Client(base_url=server.url) as connection:
        r = connection.post("/classify", json={"text": big}, headers={"x-request-id": "req-8"})
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "payload_too_large" and r.json()["error"]["field"] == "body"
        assert r.headers["x-request-id"] == "req-8"
        # the refused body was never read: the connection still serves the next request, also after a
        # body far over the server's read buffers (uvicorn drains what the client still sends)
        assert connection.post("/classify", json={"text": "fine"}).status_code == 200
        assert connection.post("/classify", json={"text": big * 128}).status_code == 413
        assert connection.post("/classify", json={"text": "fine"}).status_code == 200
    v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [big]}]}
    r = httpx.post(f"{server.url}/v2/models/classify/infer", json=v2)
    assert r.status_code == 413 and r.json()["error"].startswith("body: ")  # v2's shape
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    with client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="generate", messages=[{"role": "user", "content": big}])
    assert refused.value.status_code == 413
    assert (refused.value.type, refused.value.param) == ("invalid_request_error", "body")  # OpenAI's shape
    # chunked (no declared length): read up to the limit, then refused; under it, served as usual
    over = (b"x" * 4096 for _ in range(BODY_LIMIT // 4096 + 1))
    assert httpx.post(f"{server.url}/classify", content=over).status_code == 413
    under = (part.encode() for part in ('{"text": ', '"I love this phone"}'))
    r = httpx.post(f"{server.url}/classify", content=under)
    assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_admin_needs_the_token(shared) -> None:
    server = shared
    assert httpx.get(f"{server.url}/admin/traffic").status_code == 401
    wrong = httpx.get(f"{server.url}/admin/traffic", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert (server.settings.state_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    ok = httpx.get(f"{server.url}/admin/models", headers=server.admin_headers())
    assert ok.status_code == 200
    assert {m["ref"] for m in ok.json()["models"]} >= {TEACHER, STUDENT}


@pytest.mark.parametrize(
    ("task", "weights", "field", "status"),
    [
        ("classify", {"classify-student@9": 50, TEACHER: 50}, "weights.classify-student@9", 422),
        ("classify", {STUDENT: 30, TEACHER: 60}, "weights", 422),
        ("classify", {STUDENT: -10, TEACHER: 110}, f"weights.{STUDENT}", 422),
        ("classify", {STUDENT: 25.5, TEACHER: 74.5}, f"weights.{STUDENT}", 422),
        ("classify", {}, "weights", 422),
        ("translate", {STUDENT: 100}, "task", 404),  # no such task is served
        ("generate", {STUDENT: 100}, f"weights.{STUDENT}", 422),  # a classify model cannot serve generate
    ],
)
def test_bad_traffic_split_is_refused_and_nothing_changes(shared, task, weights, field, status) -> None:
    server = shared
    response = httpx.put(
        f"{server.url}/admin/traffic/{task}", json={"weights": weights}, headers=server.admin_headers()
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic == {"classify": {TEACHER: 100}}


def test_traffic_split_survives_a_restart(serve, state_dir: Path) -> None:
    first = serve()
    split = {STUDENT: 25, TEACHER: 75}
    assert (
        httpx.put(
            f"{first.url}/admin/traffic/classify", json={"weights": split}, headers=first.admin_headers()
        ).status_code
        == 200
    )
    first.stop()
    second = serve()
    traffic = httpx.get(f"{second.url}/admin/traffic", headers=second.admin_headers()).json()["traffic"]
    assert traffic["classify"] == split
    metrics = httpx.get(f"{second.url}/metrics").text
    assert f'kdgate_traffic_weight{{model="{STUDENT}",task="classify"}} 25.0' in metrics


async def _classify_many(url: str, keys: list[str], concurrency: int = 8) -> list[str]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(key: str) -> str:
            async with limit:
                r = await client.post(
                    "/classify", json={"text": f"text for {key}"}, headers={"x-kdgate-key": key}
                )
                assert r.status_code == 200
                return r.headers["x-kdgate-model"]

        return await asyncio.gather(*(one(k) for k in keys))


def test_weights_25_75_give_a_25_percent_share_and_keys_stick(serve) -> None:
    server = serve()
    httpx.put(
        f"{server.url}/admin/traffic/classify",
        json={"weights": {STUDENT: 25, TEACHER: 75}},
        headers=server.admin_headers(),
    )
    served = asyncio.run(_classify_many(server.url, [f"user-{i}" for i in range(2000)]))
    share = Counter(served)[STUDENT] / len(served)
    assert abs(share - 0.25) <= 0.03, share
    repeated = asyncio.run(_classify_many(server.url, ["user-7"] * 30))
    assert len(set(repeated)) == 1


def test_pin_header_reaches_the_model_and_unknown_pin_is_refused(shared) -> None:
    server = shared
    pinned = httpx.post(f"{server.url}/classify", json={"text": "hi"}, headers={"x-kdgate-model": STUDENT})
    assert pinned.headers["x-kdgate-model"] == STUDENT
    unknown = httpx.post(f"{server.url}/classify", json={"text": "hi"}, headers={"x-kdgate-model": "nope@1"})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "x-kdgate-model"


def test_raising_student_falls_back_to_the_teacher(serve, state_dir: Path) -> None:
    faulty = register_fault_model(Registry(state_dir), FaultSpec(wraps=STUDENT, error_rate=1.0)).ref
    server = serve()
    for _ in range(3):
        r = httpx.post(f"{server.url}/classify", json={"text": "hello"}, headers={"x-kdgate-model": faulty})
        assert r.status_code == 200
        assert r.headers["x-kdgate-model"] == TEACHER
        assert "fallback" in server_timing_names(r.headers["server-timing"])
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_sum(text, "kdgate_fallbacks_total", model=faulty, reason="error") == 3


def test_slow_student_times_out_to_the_teacher(serve, state_dir: Path) -> None:
    slow = register_fault_model(
        Registry(state_dir), FaultSpec(wraps=STUDENT, latency_ms=800), name="slow"
    ).ref
    server = serve(student_timeout_ms=100)
    r = httpx.post(f"{server.url}/classify", json={"text": "hello"}, headers={"x-kdgate-model": slow})
    assert r.status_code == 200 and r.headers["x-kdgate-model"] == TEACHER
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_sum(text, "kdgate_fallbacks_total", model=slow, reason="timeout") == 1


def test_burst_over_the_in_flight_bound_gets_429_at_once(serve, state_dir: Path) -> None:
    slow = register_fault_model(
        Registry(state_dir), FaultSpec(wraps=STUDENT, latency_ms=300), name="slow"
    ).ref
    server = serve(max_in_flight=2, student_timeout_ms=5000)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/classify", json={"text": f"t{i}"}, headers={"x-kdgate-model": slow})
                    for i in range(10)
                )
            )

    codes = Counter(r.status_code for r in asyncio.run(burst()))
    assert codes[429] >= 1 and codes[200] >= 2 and set(codes) <= {200, 429}, codes
    rejected = next(r for r in asyncio.run(burst()) if r.status_code == 429)
    assert rejected.json()["error"]["type"] == "overloaded"
    assert len(rejected.headers["x-request-id"]) == 32  # the id the gateway gave it


def test_health_ready_metrics_and_docs(shared) -> None:
    server = shared
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert set(httpx.get(f"{server.url}/readyz").json()["models"]) >= {TEACHER, STUDENT}
    httpx.post(f"{server.url}/classify", json={"text": "hi"})
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        "kdgate_requests_total",
        "kdgate_request_seconds_bucket",
        "kdgate_traffic_weight",
        "kdgate_batch_size_bucket",
    ):
        assert name in metrics
    assert httpx.get(f"{server.url}/docs").status_code == 200
    classify = json.loads(httpx.get(f"{server.url}/openapi.json").text)["paths"]["/classify"]["post"]
    body = classify["requestBody"]["content"]["application/json"]["schema"]
    assert {"text", "texts"} <= set(body["properties"])  # the handler reads its body itself: still documented
    assert {p["name"] for p in classify["parameters"]} == {"x-kdgate-key", "x-kdgate-model", "x-request-id"}


def test_served_probabilities_use_the_models_calibration_and_keep_its_argmax(serve, state_dir: Path) -> None:
    """The build fits a temperature per model; /classify divides the logits by it. A copy of the student
    with another temperature serves other probabilities for the same argmax."""
    registry = Registry(state_dir)
    student = registry.get(STUDENT)
    assert student.calibration is not None and student.calibration.temperature > 0
    assert 0 <= student.calibration.calibrated_ece <= 1
    hotter = student.calibration.model_copy(update={"temperature": student.calibration.temperature * 3})
    with registry.stage(student.name) as staging:
        source = registry.path(STUDENT)
        for path in source.rglob("*"):
            if path.is_file() and path.name != "manifest.json":
                (staging.path / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                os.link(path, staging.path / path.relative_to(source))
        version = registry.next_version(student.name)
        copy = staging.commit(student.model_copy(update={"version": version, "calibration": hotter}))
    server = serve()
    texts = ["what a wonderful day", "the train is late again", "it is a car"]
    logits = load_runner(registry, STUDENT).predict_logits(texts)
    for ref, temperature in [(STUDENT, student.calibration.temperature), (copy.ref, hotter.temperature)]:
        body = {"texts": texts}
        served = httpx.post(f"{server.url}/classify", json=body, headers={"x-kdgate-model": ref}).json()
        probs = np.array([[r["probabilities"][lab] for lab in student.labels] for r in served["results"]])
        np.testing.assert_allclose(probs, softmax(logits / temperature), atol=1e-5)
        assert [r["label"] for r in served["results"]] == [student.labels[i] for i in logits.argmax(1)]
