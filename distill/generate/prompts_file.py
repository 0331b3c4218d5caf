"""A user's prompts for /generate distillation: a JSONL file, one prompt per line, either
`{"prompt": "..."}` (one user turn) or `{"messages": [{"role": ..., "content": ...}, ...]}` (a chat
ending with the user's turn). The teacher completes each under its chat template, as /generate serves
`messages`. Train and held-out sides split by the same salted hash of each prompt as the seed prompts.

Example::

    prompts = read_prompts(Path("prompts.jsonl"), sha256=None)
    train = split_prompts(prompts, "train", 512, seed=0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.datafile import DataFileError, file_sha256
from distill.generate.data import Prompt, Split, in_heldout

ROLES = ("system", "user", "assistant")


def read_prompts(path: Path, sha256: str | None) -> list[Prompt]:
    """Every prompt of the file, in order; refused (naming the line) if a line is not one, and if the
    file no longer has the `sha256` it was pinned by (None: not pinned)."""
    if not path.is_file():
        raise DataFileError(f"{path} is not a file: pass a JSONL file of prompts")
    prompts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                prompts.append(_prompt(line, f"{path}:{number}"))
    if not prompts:
        raise DataFileError(f"{path} holds no prompt: one JSON object per line, with prompt or messages")
    if sha256 is not None and file_sha256(path) != sha256:
        raise DataFileError(
            f"{path} changed since a student was distilled from it (sha256 {sha256[:12]}...): restore "
            "it, or distil a new student from the new file (kdgate distill --prompts)"
        )
    return prompts


def split_prompts(prompts: list[Prompt], split: Split, n: int, seed: int) -> list[Prompt]:
    """The first `n` of the file's prompts on `split`'s side, deduplicated.

    >>> ps = [Prompt("file", t, t) for t in ("a", "b", "a")]
    >>> len(split_prompts(ps, "train", 10, 0) + split_prompts(ps, "heldout", 10, 0))
    2
    """
    seen: set[str] = set()
    side = []
    for prompt in prompts:
        if prompt.text not in seen and in_heldout(prompt.text, seed) == (split == "heldout"):
            seen.add(prompt.text)
            side.append(prompt)
    return side[:n]


def _prompt(line: str, where: str) -> Prompt:
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{where}: not JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise DataFileError(f"{where}: expected an object with prompt or messages")
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return Prompt("file", row["prompt"], row["prompt"])
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataFileError(f"{where}: expected a non-empty prompt (string) or messages (list)")
    turns = []
    for message in messages:
        if not (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content"), str)
        ):
            raise DataFileError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a content")
        turns.append((message["role"], message["content"]))
    if turns[-1][0] != "user":
        raise DataFileError(f"{where}: messages must end with the user's turn (the teacher answers it)")
    text = "\n".join(f"{role}: {content}" for role, content in turns)
    return Prompt("file", text, turns[-1][1], tuple(turns))
