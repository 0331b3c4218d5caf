"""One generation engine per loaded LM: a worker thread that interleaves the requests it holds.

Each round the worker admits waiting requests (prefill) up to `max_active`, then gives every active
request one decode step — so a short request never waits for a long one to finish, and a request whose
client went away is dropped at its next turn. Events (text deltas, the end, an error) go back to the
request's asyncio queue on the event loop. Neither the model nor its tokenizer runs on the event loop
thread: a request's prompt is tokenized here too (`encode`), between two decode steps.

Interleaving is fair but not batched: each step is one sequence's forward pass. Batched decoding of
sequences of different lengths (padded KV caches) is the next step for throughput at high concurrency.

Example::

    engine = GenerationEngine(lm, max_active=4, max_waiting=16).start()
    prompt_ids = await engine.encode("Once upon a time", None, limit=1024)
    job = engine.submit(prompt_ids, GenerationParams(max_tokens=32), loop)
    async for event in job.events(): ...
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from distill.generate.runner import DecodeState
from gateway.errors import InvalidInput, ModelUnavailable, Overloaded
from gateway.serving.generation_events import (
    Delta,
    Event,
    Failed,
    Finished,
    FinishReason,
    GenerationParams,
    TokenLogprob,
    TopK,
)
from gateway.serving.sampling import pick_token, stop_scan

log = logging.getLogger("kdgate.generation")


class LanguageModel(Protocol):
    eos_ids: frozenset[int]
    max_positions: int

    @property
    def ref(self) -> str: ...

    def encode(
        self, prompt: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> list[int]: ...

    def prefill(self, ids: list[int]) -> tuple[DecodeState, torch.Tensor]: ...

    def decode(self, state: DecodeState, token: int) -> torch.Tensor: ...

    def decode_text(self, ids: list[int]) -> str: ...


@dataclass(eq=False)
class Job:
    """One request inside the engine. Only the worker thread touches the decoding fields."""

    prompt_ids: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set from the event loop when the client goes away
    # decoding state (worker thread only)
    state: DecodeState | None = None
    logits: torch.Tensor | None = None
    completion_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    topk: TopK | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    shown: int = 0  # characters of text already sent
    logprobs_shown: int = 0  # entries of `logprobs` already sent
    generator: torch.Generator = field(default_factory=torch.Generator)

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self.queue.get()
            yield event
            if not isinstance(event, Delta):
                return

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class Encoding:
    """One prompt to tokenize on the worker thread; its ids (or its error) resolve `future`."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    limit: int  # the most prompt tokens accepted
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[int]]

    def run(self, lm: LanguageModel) -> None:
        try:
            ids = lm.encode(self.prompt, self.messages)
            if len(ids) > self.limit:
                where = "messages" if self.messages is not None else "prompt"
                raise InvalidInput(f"prompt is {len(ids)} tokens; at most {self.limit}", field=where)
        except Exception as exc:
            self.loop.call_soon_threadsafe(_resolve, self.future, None, exc)
        else:
            self.loop.call_soon_threadsafe(_resolve, self.future, ids, None)


def _resolve(future: asyncio.Future[list[int]], ids: list[int] | None, error: BaseException | None) -> None:
    if future.done():  # the request went away while its prompt was being tokenized
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert ids is not None
        future.set_result(ids)


class GenerationEngine:
    def __init__(
        self, lm: LanguageModel, max_active: int = 4, max_waiting: int = 32, record_topk: int | None = None
    ) -> None:
        self.lm = lm
        self.record_topk = record_topk
        self.max_active = max_active
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._encodings: list[Encoding] = []  # not bounded by max_waiting: a request holds no slot yet
        self._wake = threading.Condition()
        self._closed = False
        self._held = 0  # jobs waiting or active; guarded by _wake
        self._thread = threading.Thread(target=self._run, name=f"generate-{lm.ref}", daemon=True)

    def start(self) -> GenerationEngine:
        self._thread.start()
        return self

    async def encode(
        self, prompt: str | None, messages: list[dict[str, str]] | None, limit: int
    ) -> list[int]:
        """The prompt's token ids (a raw prompt, or chat messages through the chat template), tokenized on
        the worker thread; a prompt over `limit` tokens is `InvalidInput` naming `prompt` or `messages`."""
        loop = asyncio.get_running_loop()
        encoding = Encoding(prompt, messages, limit, loop, loop.create_future())
        with self._wake:
            if self._closed:
                raise ModelUnavailable(f"{self.lm.ref} is shutting down")
            self._encodings.append(encoding)
            self._wake.notify()
        return await encoding.future

    def submit(self, prompt_ids: list[int], params: GenerationParams, loop: asyncio.AbstractEventLoop) -> Job:
        job = Job(prompt_ids, params, loop, topk=TopK() if self.record_topk else None)
        if params.seed is not None:
            job.generator.manual_seed(params.seed)
        else:
            job.generator.seed()
        with self._wake:
            if self._held >= self.max_active + self.max_waiting:
                raise Overloaded(f"{self.lm.ref}: {self._held} generations running or waiting; retry shortly")
            self._held += 1
            self._waiting.append(job)
            self._wake.notify()
        return job

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._active or self._encodings):
                    self._wake.wait()
                if self._closed:
                    break
                while self._waiting and len(self._active) < self.max_active:
                    self._active.append(self._waiting.popleft())
            self._encode_pending()
            for job in list(self._active):
                if job.cancelled or not self._advance(job):
                    self._active.remove(job)
                    job.state = job.logits = None  # free the KV cache now
                    with self._wake:
                        self._held -= 1
                # between any two steps: a new request waits one forward pass for its prompt, not a round
                self._encode_pending()
        with self._wake:
            left, self._encodings = self._encodings, []
        for encoding in left:
            error = ModelUnavailable(f"{self.lm.ref} is shutting down")
            encoding.loop.call_soon_threadsafe(_resolve, encoding.future, None, error)

    def _encode_pending(self) -> None:
        with self._wake:
            pending, self._encodings = self._encodings, []
        for encoding in pending:
            encoding.run(self.lm)

    def _advance(self, job: Job) -> bool:
        """One step of one job; False when it is finished (or failed)."""
        try:
            if job.state is None:
                job.state, job.logits = self.lm.prefill(job.prompt_ids)
            assert job.logits is not None
            p = job.params
            token = pick_token(job.logits, p.temperature, p.top_p, job.generator)
            if token in self.lm.eos_ids:
                return self._finish(job, "stop")
            job.completion_ids.append(token)
            self._record(job, token)
            text = self.lm.decode_text(job.completion_ids)
            visible, stopped = stop_scan(text, list(p.stop))
            if stopped:
                return self._finish(job, "stop", text[:visible])
            if not text.endswith("\ufffd") and visible > job.shown:  # never show half a character
                job.emit(Delta(text[job.shown : visible], len(job.completion_ids), self._unsent(job)))
                job.shown = visible
            at_limit = job.state.length + 1 >= self.lm.max_positions
            if len(job.completion_ids) >= p.max_tokens or at_limit:
                return self._finish(job, "length", text)
            job.logits = self.lm.decode(job.state, token)
            return True
        except Exception as exc:
            log.warning("generation on %s failed", self.lm.ref, exc_info=True)
            job.emit(Failed(exc, len(job.completion_ids)))
            return False

    def _record(self, job: Job, token: int) -> None:
        assert job.logits is not None
        logprobs = torch.log_softmax(job.logits.float(), dim=-1)  # (V,)
        job.token_logprobs.append(float(logprobs[token]))
        if job.topk is not None and self.record_topk:
            top_logprobs, top_ids = logprobs.topk(self.record_topk)  # (k,)
            job.topk.ids.append(top_ids.numpy().astype(np.int32))
            job.topk.logprobs.append(top_logprobs.numpy())
            job.topk.tail.append(max(0.0, 1.0 - float(top_logprobs.exp().sum())))
        k = job.params.logprobs
        if k is not None:  # decoded here, on the worker thread, like every other tokenizer call
            alternatives: tuple[tuple[str, float], ...] = ()
            if k:
                top = logprobs.topk(k)
                pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
                alternatives = tuple((self.lm.decode_text([i]), lp) for i, lp in pairs)
            chosen = TokenLogprob(self.lm.decode_text([token]), float(logprobs[token]), alternatives)
            job.logprobs.append(chosen)

    @staticmethod
    def _unsent(job: Job) -> tuple[TokenLogprob, ...]:
        unsent = tuple(job.logprobs[job.logprobs_shown :])
        job.logprobs_shown = len(job.logprobs)
        return unsent

    def _finish(self, job: Job, reason: FinishReason, text: str | None = None) -> bool:
        if text is None:
            text = self.lm.decode_text(job.completion_ids)
        if len(text) > job.shown or len(job.logprobs) > job.logprobs_shown:
            job.emit(Delta(text[job.shown :], len(job.completion_ids), self._unsent(job)))
            job.shown = len(text)
        ids, chosen = list(job.completion_ids), list(job.token_logprobs)
        job.emit(Finished(reason, text, ids, chosen, job.topk, list(job.logprobs)))
        return False
