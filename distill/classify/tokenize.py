"""Tokenization for the /classify encoders: the fast `tokenizers` library, padded per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

TOKENIZER_FILE = "tokenizer.json"


class BatchTokenizer:
    """Wraps a `tokenizer.json`: truncates to `max_length` and pads each batch to its longest text.

    Example::

        tok = BatchTokenizer.from_dir(model_dir, max_length=64)
        ids, mask = tok(["good day", "bad day"])   # int64 arrays (B, T)
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self._source = tokenizer.to_str()  # as given: what a saved model ships with
        tokenizer = Tokenizer.from_str(self._source)  # private copy: settings below are global to it
        self.pad_id = pad_id_of(tokenizer)
        # The shipped tokenizer.json pads every input to 128; we pad per batch instead (far less work).
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        self._tok = tokenizer
        self.max_length = max_length

    @classmethod
    def from_dir(cls, directory: str | Path, max_length: int) -> BatchTokenizer:
        return cls(Tokenizer.from_file(str(Path(directory) / TOKENIZER_FILE)), max_length)

    def save(self, directory: Path) -> str:
        """Writes the tokenizer as it was given into `directory`; returns the file's name."""
        (directory / TOKENIZER_FILE).write_text(self._source)
        return TOKENIZER_FILE

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.encode(texts)]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.encode(texts))

    def pad(self, encodings: list[Encoding]) -> tuple[np.ndarray, np.ndarray]:
        """ids and attention mask (B, T), padded to the longest of `encodings`."""
        width = max((len(e.ids) for e in encodings), default=1)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(encodings), width), dtype=np.int64)  # (B, T)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask

    def encode(self, texts: list[str]) -> list[Encoding]:
        """Each text's tokens, truncated, unpadded: `pad` makes model inputs of any subset of them."""
        # On the calling thread, text by text: `encode_batch` fans out to a rayon pool of one thread per
        # core. For a serving batch of a few tweets that saved no time and cost ~60% more tokenizer CPU
        # in spinning threads, on the cores the event loop and the other models share (the models' own
        # thread counts are the settings' budget).
        return [self._tok.encode(text) for text in texts]


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The id padding uses: from the tokenizer's padding settings, else its pad token, else 0. It matters
    beyond the mask for models that derive positions from it (RoBERTa counts non-pad tokens)."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0
