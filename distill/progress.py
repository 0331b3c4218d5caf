"""How far long work (labelling, training) has got, seen from outside the terminal.

Every long loop in kdgate draws a tqdm bar. `ProgressBar` is that bar, and it also tells the listener of
the current context (if any) how far it is: the background build of the default models puts each step's
phase, progress and ETA in its status file this way, with no progress argument threaded through the
builders.

>>> seen = []
>>> with listening(seen.append):
...     with ProgressBar(total=4, desc="demo", disable=True) as bar:
...         bar.update(1)
>>> seen[0].desc, seen[0].done, seen[0].total
('demo', 1.0, 4.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Progress:
    desc: str
    done: float
    total: float | None
    elapsed: float  # seconds since the bar started
    initial: float = 0.0  # where a resumed bar started: the rate counts only what this run did

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; None before any progress or without a total.

        >>> Progress("fine-tune", done=25, total=100, elapsed=10.0).eta_seconds
        30.0
        >>> Progress("fine-tune", done=60, total=100, elapsed=10.0, initial=50).eta_seconds
        40.0
        >>> Progress("fine-tune", done=0, total=100, elapsed=3.0).eta_seconds is None
        True
        """
        if not self.total or self.done <= self.initial:
            return None
        return self.elapsed * (self.total - self.done) / (self.done - self.initial)


Listener = Callable[[Progress], None]
_listener: ContextVar[Listener | None] = ContextVar("progress_listener", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Sends every `ProgressBar` update made in this context (and this thread) to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class ProgressBar(tqdm):
    """A tqdm bar that also reports to the context's listener. Advance it with `update`, not by
    iterating (tqdm's iterator skips `update`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started = time.monotonic()
        self._desc = str(kwargs.get("desc") or "")  # a disabled tqdm keeps no description either
        self._initial = float(kwargs.get("initial", 0))
        self._count = self._initial  # a disabled tqdm keeps no count

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        self._count += n or 0
        if (listener := _listener.get()) is not None:
            total = None if self.total is None else float(self.total)
            elapsed = time.monotonic() - self._started
            listener(Progress(self._desc, self._count, total, elapsed, self._initial))
        return shown
