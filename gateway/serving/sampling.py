"""Pure pieces of decoding: choosing the next token, and finding stop strings in streamed text."""

from __future__ import annotations

import torch


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy at temperature 0; otherwise a sample from the nucleus holding `top_p` of the mass.

    >>> pick_token(torch.tensor([0.1, 2.0, 0.3]), 0.0, 1.0, torch.Generator())
    1
    """
    if temperature <= 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > top_p  # keeps at least the top token
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def stop_scan(text: str, stops: list[str]) -> tuple[int, bool]:
    """How much of `text` can be shown, and whether a stop string ended it.

    A stop string found → (its start, True): the text is cut before it. Otherwise the longest tail of
    the text that could still grow into a stop string is held back, so a client never sees a stop
    string's beginning that later turns out to be one.

    >>> stop_scan("Hello wor", ["world"])
    (6, False)
    >>> stop_scan("Hello world!", ["world"])
    (6, True)
    """
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if found:
        return min(found), True
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return len(text) - held, False
