"""The generation engine with a fake language model: where prompts are tokenized, what a request sees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import torch

from distill.generate.runner import DecodeState
from gateway.errors import InvalidInput
from gateway.serving.engine import GenerationEngine
from gateway.serving.generation_events import Delta, Event, Finished, GenerationParams

VOCAB = 128  # token id = character code
T = TypeVar("T")


class LetterLM:
    """One token per character; always continues with `next_char`. Records the thread each call runs on."""

    eos_ids = frozenset({0})
    max_positions = 64
    ref = "letters@1"

    def __init__(self, next_char: str = "x", fail_encode: bool = False) -> None:
        self.next_char = next_char
        self.fail_encode = fail_encode
        self.threads: dict[str, list[threading.Thread]] = {"encode": [], "prefill": []}

    def encode(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        self.threads["encode"].append(threading.current_thread())
        if self.fail_encode:
            raise ValueError("no chat template")
        text = prompt if messages is None else "".join(m["content"] for m in messages)
        return [ord(c) for c in text or ""]

    def prefill(self, ids: list[int]) -> tuple[DecodeState, torch.Tensor]:
        self.threads["prefill"].append(threading.current_thread())
        return DecodeState(None, len(ids)), self._logits()

    def decode(self, state: DecodeState, token: int) -> torch.Tensor:
        state.length += 1
        return self._logits()

    def decode_text(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def _logits(self) -> torch.Tensor:
        logits = torch.zeros(VOCAB)  # (V,)
        logits[ord(self.next_char)] = 10.0
        return logits


def run_with(lm: LetterLM, body: Callable[[GenerationEngine], Awaitable[T]]) -> T:
    """Runs `body(engine)` on a fresh event loop against a started engine, closing it after."""

    async def main() -> T:
        engine = GenerationEngine(lm, max_active=2, max_waiting=2).start()
        try:
            return await body(engine)
        finally:
            engine.close()

    return asyncio.run(main())


def test_prompts_are_tokenized_on_the_engine_thread_not_the_event_loop() -> None:
    lm = LetterLM()

    async def body(engine: GenerationEngine) -> tuple[list[int], threading.Thread]:
        ids = await engine.encode("hi", None, limit=10)
        job = engine.submit(ids, GenerationParams(max_tokens=1), asyncio.get_running_loop())
        async for _ in job.events():
            pass
        return ids, threading.current_thread()

    ids, loop_thread = run_with(lm, body)
    assert ids == [ord("h"), ord("i")]
    (encoded_on,) = lm.threads["encode"]
    assert encoded_on is not loop_thread
    assert lm.threads["prefill"] == [encoded_on]  # the thread that runs the model tokenizes too


@pytest.mark.parametrize(
    ("prompt", "messages", "field"), [("hello", None, "prompt"), (None, "hello", "messages")]
)
def test_a_prompt_over_the_token_limit_is_invalid_input_naming_its_field(
    prompt: str | None, messages: str | None, field: str
) -> None:
    chat = [{"role": "user", "content": messages}] if messages is not None else None

    async def body(engine: GenerationEngine) -> list[int]:
        with pytest.raises(InvalidInput) as caught:
            await engine.encode(prompt, chat, limit=3)
        assert caught.value.field == field
        assert caught.value.message == "prompt is 5 tokens; at most 3"
        return await engine.encode("abc", None, limit=3)  # the engine serves on

    assert run_with(LetterLM(), body) == [97, 98, 99]


def test_a_tokenizer_error_reaches_the_request_unchanged() -> None:
    async def body(engine: GenerationEngine) -> None:
        with pytest.raises(ValueError, match="no chat template"):
            await engine.encode(None, [{"role": "user", "content": "hi"}], limit=10)

    run_with(LetterLM(fail_encode=True), body)


def test_a_generation_streams_deltas_then_finishes_at_max_tokens() -> None:
    async def body(engine: GenerationEngine) -> list[Event]:
        ids = await engine.encode("ab", None, limit=10)
        job = engine.submit(ids, GenerationParams(max_tokens=3), asyncio.get_running_loop())
        return [event async for event in job.events()]

    *deltas, end = run_with(LetterLM(next_char="y"), body)
    assert "".join(d.text for d in deltas if isinstance(d, Delta)) == "yyy"
    assert isinstance(end, Finished) and end.reason == "length" and end.text == "yyy"
    assert end.completion_ids == [ord("y")] * 3 and len(end.token_logprobs) == 3


def test_logprobs_asked_for_come_with_each_delta_and_in_full_at_the_end() -> None:
    async def body(engine: GenerationEngine) -> list[Event]:
        params = GenerationParams(max_tokens=2, logprobs=2)
        job = engine.submit([ord("a")], params, asyncio.get_running_loop())
        return [event async for event in job.events()]

    *deltas, end = run_with(LetterLM(next_char="y"), body)
    assert isinstance(end, Finished)
    streamed = [t for d in deltas if isinstance(d, Delta) for t in d.logprobs]
    assert streamed == end.logprobs and [t.token for t in end.logprobs] == ["y", "y"]
    # the LetterLM puts e^10 on "y" and 1 on each of the 127 other ids
    expected = 10.0 - float(torch.logsumexp(torch.tensor([10.0] + [0.0] * (VOCAB - 1)), 0))
    for t in end.logprobs:
        assert t.logprob == pytest.approx(expected, abs=1e-5)
        (best, best_lp), (_, second_lp) = t.top
        assert best == "y" and best_lp == pytest.approx(t.logprob)
        assert second_lp == pytest.approx(expected - 10)


def test_no_logprobs_are_computed_unless_asked() -> None:
    async def body(engine: GenerationEngine) -> list[Event]:
        job = engine.submit([ord("a")], GenerationParams(max_tokens=2), asyncio.get_running_loop())
        return [event async for event in job.events()]

    *deltas, end = run_with(LetterLM(), body)
    assert isinstance(end, Finished) and end.logprobs == []
    assert all(d.logprobs == () for d in deltas if isinstance(d, Delta))
