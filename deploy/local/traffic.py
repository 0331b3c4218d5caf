"""Client traffic for a gateway or the topology's balancer: threads posting real texts, each with a
routing key of its own, counting the answers by status code and serving model. Tests drive rollouts
with it; the benches load the topology with it."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx


class TrafficLoop:
    """Posts real texts with distinct routing keys until `stop()`, `max_requests` or `max_seconds`.

    `path` and `body` choose the endpoint: /classify with `{"text": ...}` by default. `pause_s` is each
    thread's think time between requests: a loop that saturates both cores starves the SCHED_IDLE
    shadow teacher, and the canary's compared samples (its evidence) then trickle in; it may be changed
    while the loop runs (each thread reads it after every request). `max_seconds` must
    outlast the caller's wait: a generate rollout once sat at its last step, out of traffic, after the
    180 s this used to be.
    """

    def __init__(
        self,
        url: str,
        texts: list[str],
        threads: int = 4,
        max_requests: int = 50_000,
        max_seconds: float = 900.0,  # a safety net only: leaving the `with` stops the loop
        path: str = "/classify",
        body: Callable[[str], dict[str, Any]] = lambda text: {"text": text},
        pause_s: float = 0.0,
    ) -> None:
        self.url = url
        self.texts = texts
        self.path = path
        self.body = body
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.pause_s = pause_s
        self.codes: Counter[int] = Counter()
        self.served: Counter[str] = Counter()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> TrafficLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                i = next(self._ids)
                if i >= self.max_requests:
                    return
                text = self.texts[i % len(self.texts)]
                try:
                    r = client.post(self.path, json=self.body(text), headers={"x-kdgate-key": f"user-{i}"})
                except httpx.HTTPError:
                    with self._lock:
                        self.codes[0] += 1
                    continue
                with self._lock:
                    self.codes[r.status_code] += 1
                    if r.status_code == 200:
                        self.served[r.headers["x-kdgate-model"]] += 1
                if self.pause_s:
                    self._stop.wait(self.pause_s)
