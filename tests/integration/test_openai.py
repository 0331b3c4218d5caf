"""The OpenAI-compatible routes, spoken to by the official `openai` client against a real gateway serving
the real SmolLM2 teacher and its tiny student: chat and text completions (whole and streamed), the task
alias routed by the split and a model ref pinned, the model list, and refusals in OpenAI's error shape."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import RunningServer, metric_sum, start_server

TEACHER, STUDENT = "generate-teacher@1", "generate-student@1"
KEY = "sk-test-key"  # the gateway requires one of its api_keys on every inference route
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(generate_built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    state = tmp_path_factory.mktemp("openai-module") / "state"
    shutil.copytree(generate_built_state, state, copy_function=os.link)
    running = start_server(state, api_keys=[KEY, "other-key"], shadow_flush_seconds=0.2)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def test_a_chat_completion_through_the_alias_is_served_by_the_split(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="generate", messages=HELLO, max_tokens=8, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == TEACHER  # the default split: the teacher at 100%
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_pinned_text_completion_runs_to_max_tokens(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=STUDENT, prompt="One, two, three,", max_tokens=5, temperature=0)
    assert reply.object == "text_completion" and reply.model == STUDENT
    assert reply.choices[0].finish_reason == "length" and reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_a_streamed_chat_sends_deltas_a_finish_and_usage(
    client: openai.OpenAI, server: RunningServer
) -> None:
    before = metric_sum(httpx.get(f"{server.url}/metrics").text, "kdgate_requests_total", model=TEACHER)
    stream = client.chat.completions.create(
        model=TEACHER,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == TEACHER for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # the usage chunk comes last
    assert chunks[-1].usage.completion_tokens >= 1
    after = metric_sum(httpx.get(f"{server.url}/metrics").text, "kdgate_requests_total", model=TEACHER)
    assert after == before + 1  # accounted once, as on /generate


def test_the_streamed_text_completion_ends_with_done(server: RunningServer) -> None:
    body = {"model": "generate", "prompt": "Hello", "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"object": "text_completion"' in lines[0]


def test_chat_logprobs_are_the_serving_models_own(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TEACHER, messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert reply.usage is not None and len(tokens) == reply.usage.completion_tokens
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0.0
        ranked = [a.logprob for a in t.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)


def test_a_streamed_completion_carries_logprobs_chunk_by_chunk(server: RunningServer) -> None:
    body = {"model": STUDENT, "prompt": "One, two, three,", "max_tokens": 5, "temperature": 0}
    url = f"{server.url}/v1/completions"
    whole = httpx.post(url, json={**body, "logprobs": 2}, headers=AUTH, timeout=60).json()["choices"][0]
    tops = whole["logprobs"]["top_logprobs"]
    assert len(whole["logprobs"]["tokens"]) == 5 and all(len(t) == 2 for t in tops)
    streamed_body = {**body, "logprobs": 2, "stream": True}
    with httpx.stream("POST", url, json=streamed_body, headers=AUTH, timeout=60) as r:
        chunks = [line[6:] for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [json.loads(c)["choices"] for c in chunks]
    streamed = [p[0]["logprobs"] for p in pieces if p and p[0]["logprobs"]]
    assert [t for lp in streamed for t in lp["tokens"]] == whole["logprobs"]["tokens"]
    assert [o for lp in streamed for o in lp["text_offset"]] == whole["logprobs"]["text_offset"]


def test_the_model_list_holds_the_alias_and_every_loaded_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "generate" and {TEACHER, STUDENT} <= set(ids)


def test_the_sticky_key_is_user(server: RunningServer, client: openai.OpenAI) -> None:
    split = {"weights": {TEACHER: 50, STUDENT: 50}}
    url = f"{server.url}/admin/traffic/generate"
    assert httpx.put(url, json=split, headers=server.admin_headers()).status_code == 200
    try:
        for user in ("ann", "bob", "cid"):
            served = {
                client.completions.create(model="generate", prompt="Hi", max_tokens=1, user=user).model
                for _ in range(3)
            }
            assert len(served) == 1, (user, served)  # one user, one model while the split holds
    finally:
        httpx.put(url, json={"weights": {TEACHER: 100}}, headers=server.admin_headers())


def test_student_traffic_through_v1_is_shadowed_as_on_generate(
    server: RunningServer, client: openai.OpenAI
) -> None:
    def shadowed() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return metric_sum(text, "kdgate_shadow_completions_total", task="generate", model=STUDENT)

    url = f"{server.url}/admin/traffic/generate"
    assert httpx.put(url, json={"weights": {STUDENT: 100}}, headers=server.admin_headers()).is_success
    before = shadowed()
    try:
        for i in range(2):
            reply = client.chat.completions.create(
                model="generate", messages=[{"role": "user", "content": f"Tell story {i}"}], max_tokens=4
            )
            assert reply.model == STUDENT
    finally:
        httpx.put(url, json={"weights": {TEACHER: 100}}, headers=server.admin_headers())
    deadline = time.monotonic() + 60  # bounds a failure only
    while shadowed() < before + 2:  # the teacher scored both: the judge's evidence, as on /generate
        assert time.monotonic() < deadline, "the /v1 completions were not shadowed"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"temperature": 3.5}, "temperature"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
    ],
    ids=["n", "tools", "response_format", "logit_bias", "top_logprobs", "temperature", "max_tokens", "empty"],
)
def test_what_is_not_served_is_a_400_naming_the_field(client: openai.OpenAI, extra: dict, param: str) -> None:
    body = {"model": "generate", "messages": HELLO, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**body)
    error = refused.value.body
    assert isinstance(error, dict) and param in str(error.get("param")), error
    assert error["type"] == "invalid_request_error" and error["message"]


def test_an_unknown_model_is_a_404_naming_the_served_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    error = missing.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found" and error["param"] == "model"
    assert "generate" in error["message"] and TEACHER in error["message"]


def test_unknown_fields_are_ignored(server: RunningServer) -> None:
    body = {"model": "generate", "prompt": "Hi", "max_tokens": 1, "frequency_penalty": 0.5, "x_custom": 1}
    r = httpx.post(f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


def test_a_stream_cut_by_the_client_stops_its_generation(
    client: openai.OpenAI, server: RunningServer
) -> None:
    def cancelled() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return metric_sum(text, "kdgate_generate_finished_total", model=TEACHER, reason="cancelled")

    before = cancelled()
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    stream = client.chat.completions.create(model=TEACHER, messages=story, max_tokens=200, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # a token arrived: the generation runs; now hang up
    stream.close()
    deadline = time.monotonic() + 30  # bounds a failure only
    while cancelled() < before + 1:
        assert time.monotonic() < deadline, "the cut stream's generation was not cancelled"
        time.sleep(0.2)


def test_api_keys_guard_every_inference_route(server: RunningServer) -> None:
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.code == "invalid_api_key"
    for path, body in (("/generate", {"prompt": "Hi", "max_tokens": 1}), ("/classify", {"text": "hi"})):
        r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"  # kdgate's own shape
    text = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    for path, body in (("/classify/topics", {"text": "hi"}), ("/v2/models/classify/infer", text)):
        assert httpx.post(f"{server.url}{path}", json=body, timeout=60).status_code == 401, path
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200  # v2 health stays open
    other = {"Authorization": "Bearer other-key"}
    r = httpx.post(
        f"{server.url}/generate", json={"prompt": "Hi", "max_tokens": 1}, headers=other, timeout=60
    )
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # health stays open


def test_routes_are_in_the_openapi_contract(server: RunningServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    fields = {"model", "messages", "max_completion_tokens", "logprobs", "top_logprobs"}
    assert fields <= set(body["properties"])
    assert {"/v1/completions", "/v1/models"} <= set(spec["paths"])
    assert "413" in chat["responses"]  # the body limit, answered before the route runs
    assert "413" not in spec["paths"]["/v1/models"]["get"]["responses"]
    guarded = {
        path
        for path, operations in spec["paths"].items()
        for operation in operations.values()
        if operation.get("security") == [{"ApiKeys": []}]
    }
    inference = {"/classify", "/classify/{task}", "/generate", "/v1/models", "/v1/chat/completions"}
    assert inference | {"/v2/models/{name}/infer"} <= guarded
    assert not any(path.startswith(("/admin", "/healthz", "/readyz")) for path in guarded)
    assert spec["components"]["securitySchemes"]["ApiKeys"]["scheme"] == "bearer"
