"""POST /generate on a real server with the real SmolLM2 teacher and a small student."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from distill.faults import FaultSpec, register_fault_model
from distill.registry import Registry
from distill.shadowlog.reader import read_shadow
from tests.support import RunningServer, metric_sum, start_server

TEACHER, STUDENT = "generate-teacher@1", "generate-student@1"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]  # runs to max_tokens


def gen(url: str, body: dict[str, Any], model: str | None = None, **headers: str) -> httpx.Response:
    if model is not None:
        headers["x-kdgate-model"] = model
    return httpx.post(f"{url}/generate", json=body, headers=headers, timeout=120)


def sse_payloads(lines: list[str]) -> list[Any]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


@pytest.fixture(scope="module")
def server(generate_built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the tests that change nothing but its counters (each starts from a copy)."""
    state = tmp_path_factory.mktemp("generate-module") / "state"
    shutil.copytree(generate_built_state, state, copy_function=os.link)
    running = start_server(state, shadow_flush_seconds=0.2)
    yield running
    running.stop()


@pytest.fixture
def own_server(serve: Callable[..., Any], generate_state_dir: Path) -> RunningServer:
    """A server of the test's own, for tests that change traffic or read counters from zero."""
    return serve(state_dir=generate_state_dir, shadow_flush_seconds=0.2)


def test_both_models_answer_prompts_and_chat(server: Any) -> None:
    for model in (TEACHER, STUDENT):
        r = gen(server.url, {"prompt": "The weather today is", "max_tokens": 8}, model)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == model == r.headers["x-kdgate-model"]
        assert r.headers["x-request-id"] == body["request_id"]
        assert 1 <= body["usage"]["completion_tokens"] <= 8 and body["usage"]["prompt_tokens"] == 4
        assert body["finish_reason"] in ("stop", "length")
    r = gen(server.url, {"messages": CHAT, "max_tokens": 20}, TEACHER)
    assert r.status_code == 200 and "Paris" in r.json()["text"]


def test_default_route_is_the_teacher(server: Any) -> None:
    r = gen(server.url, {"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == TEACHER


def test_stop_and_max_tokens_are_honoured(server: Any) -> None:
    r = gen(server.url, {"prompt": "One, two, three,", "max_tokens": 40, "stop": [" six"]}, TEACHER)
    body = r.json()
    assert body["finish_reason"] == "stop" and "six" not in body["text"] and "five" in body["text"]
    r = gen(
        server.url, {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0.8, "seed": 1}, STUDENT
    )
    body = r.json()
    assert body["usage"]["completion_tokens"] <= 5
    if body["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 5


def test_sampling_with_a_seed_is_reproducible(server: Any) -> None:
    body = {"prompt": "My favourite food is", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    first, second = (gen(server.url, body, TEACHER).json()["text"] for _ in range(2))
    assert first == second


def test_streaming_sends_the_same_text_token_by_token(server: Any) -> None:
    body: dict[str, Any] = {"messages": CHAT, "max_tokens": 20}
    whole = gen(server.url, body, TEACHER).json()
    with httpx.stream(
        "POST", f"{server.url}/generate", json={**body, "stream": True}, headers={"x-kdgate-model": TEACHER}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-kdgate-model"] == TEACHER
        payloads = sse_payloads(list(r.iter_lines()))
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    deltas = [e["text"] for e in events if "text" in e]
    assert len(deltas) > 1 and "".join(deltas) == whole["text"]
    assert events[-1]["finish_reason"] == whole["finish_reason"]
    assert events[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "", "max_tokens": 4}, "prompt"),
        ({"prompt": "   ", "max_tokens": 4}, "prompt"),
        ({"prompt": "hi", "max_tokens": 100000}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.5}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "colour": "red"}, "colour"),
        ({"prompt": "hi", "messages": CHAT}, "body"),
        ({}, "body"),
        ({"prompt": 5}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"prompt": "x" * 9000}, "prompt"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server: Any, body: dict[str, Any], field: str) -> None:
    r = gen(server.url, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_a_prompt_over_the_token_limit_is_a_422_naming_its_field(server: Any) -> None:
    """Counted on the model's engine thread, answered with the same error as any other bad input."""
    long = "x " * 3000  # under max_prompt_chars, over max_prompt_tokens
    for body, field in (
        ({"prompt": long}, "prompt"),
        ({"messages": [{"role": "user", "content": long}]}, "messages"),
    ):
        r = gen(server.url, body)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_input" and error["field"] == field
        assert re.fullmatch(r"prompt is \d+ tokens; at most 1024", error["message"])
        assert r.headers["x-request-id"]


def test_malformed_json_and_unknown_pin(server: Any) -> None:
    r = httpx.post(
        f"{server.url}/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "malformed_request"
    r = gen(server.url, {"prompt": "hi"}, "generate-student@9")
    assert r.status_code == 422 and r.json()["error"]["field"] == "x-kdgate-model"


def test_short_request_is_not_stuck_behind_a_long_one(server: Any) -> None:
    """Interleaving: a 3-token request sent after a 60-token one finishes first."""

    async def both() -> list[str]:
        finished: list[str] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def one(name: str, tokens: int, delay: float) -> None:
                await asyncio.sleep(delay)
                body = {"messages": STORY, "max_tokens": tokens}
                r = await client.post("/generate", json=body, headers={"x-kdgate-model": TEACHER})
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == tokens
                finished.append(name)

            await asyncio.gather(one("long", 60, 0.0), one("short", 3, 0.5))
        return finished

    assert asyncio.run(both()) == ["short", "long"]


def test_client_disconnect_mid_stream_frees_the_slot(
    serve: Callable[..., Any], generate_state_dir: Path
) -> None:
    server = serve(state_dir=generate_state_dir, generate_max_active=1, generate_max_waiting=0)
    body = {"messages": STORY, "max_tokens": 200, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/generate", json=body, headers={"x-kdgate-model": TEACHER}, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # a token arrived: the generation is running; now hang up
    # The only slot was held by the stream; after the disconnect a new request must get it (not a 429).
    deadline = time.monotonic() + 30
    while True:
        r = gen(server.url, {"prompt": "Hi", "max_tokens": 2}, TEACHER)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 429
        time.sleep(0.2)
    assert r.status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_sum(text, "kdgate_generate_finished_total", model=TEACHER, reason="cancelled") == 1
    assert metric_sum(text, "kdgate_generate_tokens_total", model=TEACHER, kind="completion") < 150


def test_overload_is_a_429_at_once(serve: Callable[..., Any], generate_state_dir: Path) -> None:
    server = serve(state_dir=generate_state_dir, generate_max_active=1, generate_max_waiting=0)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            body = {"prompt": "Write a long story.", "max_tokens": 30}
            calls = [
                client.post("/generate", json=body, headers={"x-kdgate-model": TEACHER}) for _ in range(4)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    codes = asyncio.run(burst())
    assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}


def test_failing_student_falls_back_to_the_teacher(
    serve: Callable[..., Any], generate_state_dir: Path
) -> None:
    broken = register_fault_model(Registry(generate_state_dir), FaultSpec(wraps=STUDENT, error_rate=1.0))
    server = serve(state_dir=generate_state_dir)
    for stream in (False, True):
        body = {"prompt": "Hello there", "max_tokens": 4, "stream": stream}
        r = gen(server.url, body, broken.ref)
        assert r.status_code == 200 and r.headers["x-kdgate-model"] == TEACHER
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_sum(text, "kdgate_fallbacks_total", model=broken.ref, reason="error") == 2


def test_shadow_records_carry_the_teachers_top_k_per_token(own_server: RunningServer) -> None:
    server = own_server
    admin = server.admin_headers()
    r = httpx.put(
        f"{server.url}/admin/traffic/generate", json={"weights": {STUDENT: 100}}, headers=admin, timeout=30
    )
    assert r.status_code == 200, r.text
    served: dict[str, int] = {}
    for i in range(3):
        r = gen(server.url, {"prompt": f"Story number {i}:", "max_tokens": 6})
        assert r.json()["model"] == STUDENT
        served[r.json()["request_id"]] = r.json()["usage"]["completion_tokens"]
    teacher = gen(server.url, {"prompt": "Teacher, say hi", "max_tokens": 5}, TEACHER).json()
    table = _wait_for_rows(server.settings.state_dir, len(served) + 1)
    rows = {row["request_id"]: row for row in table.to_pylist()}
    compared = 0
    for request_id, tokens in served.items():
        row = rows[request_id]
        assert row["served_model"] == STUDENT and row["teacher_model"] == TEACHER
        assert len(row["served_ids"]) == tokens == len(row["token_agree"]) == len(row["teacher_tail_mass"])
        assert np.asarray(row["teacher_topk_ids"]).shape == (tokens, 20)
        logprobs = np.asarray(row["teacher_topk_logprobs"], dtype=np.float32)
        assert np.all(np.diff(logprobs, axis=1) <= 1e-3)  # sorted, most likely first
        assert row["kl"] is not None and row["kl"] >= 0
        compared += tokens
    own = rows[teacher["request_id"]]  # the teacher's own completion: top-k recorded while generating
    assert own["token_agree"] is None and own["kl"] is None
    assert np.asarray(own["teacher_topk_ids"]).shape == (teacher["usage"]["completion_tokens"], 20)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_sum(text, "kdgate_shadow_compared_total", task="generate", model=STUDENT) == compared
    disagreed = sum(sum(not a for a in rows[r]["token_agree"]) for r in served)
    assert metric_sum(text, "kdgate_shadow_disagreed_total", task="generate", model=STUDENT) == disagreed
    assert metric_sum(text, "kdgate_shadow_completions_total", model=STUDENT) == len(served)


def _wait_for_rows(state_dir: Path, n: int) -> Any:
    deadline = time.monotonic() + 60
    while True:
        table = read_shadow(str(state_dir / "shadow"), "generate")
        if table.num_rows >= n or time.monotonic() > deadline:
            return table
        time.sleep(0.2)
