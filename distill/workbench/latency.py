"""Latency of a candidate's ONNX export at batch 1 on 1 intra-op thread, measured interleaved with a
reference model in the same process, so that whatever else the machine is doing slows both alike.

A sweep runs for many minutes, and on a shared machine the background load changes between its first
point and its last: raw milliseconds of two points measured twenty minutes apart compare the machine,
not the students. Each candidate call is paired with a reference call on the same text (their order
alternating, so neither always runs with a warmer cache), and the point's latency is reported as its
ratio to the reference measured beside it, times the reference's latency measured once when the sweep
began. The raw figures are kept too.

Only the model call is timed, on pre-tokenized inputs: tokenizing one text costs the same for every
point of a sweep, and it is the model that the grid changes.

    pair = measure_pair(Session(int8_path, tokenizer), Session(ref_path, ref_tokenizer), texts)
    pair.candidate.p50_ms, pair.ratio_p50
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distill.classify.tokenize import BatchTokenizer

WARMUP_CALLS = 10  # first calls allocate arenas and fill caches; not timed


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, millis: list[float]) -> Percentiles:
        return cls(float(np.percentile(millis, 50)), float(np.percentile(millis, 99)), len(millis))


@dataclass(frozen=True)
class Pair:
    candidate: Percentiles
    reference: Percentiles

    @property
    def ratio_p50(self) -> float:
        return self.candidate.p50_ms / self.reference.p50_ms

    @property
    def ratio_p99(self) -> float:
        return self.candidate.p99_ms / self.reference.p99_ms


class Session:
    """One ONNX classifier on one intra-op thread (as a served student runs per request), with its
    inputs tokenized ahead of the timing."""

    def __init__(self, path: Path, tokenizer: BatchTokenizer) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.segments = any(i.name == "token_type_ids" for i in self.session.get_inputs())

    def feeds(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """One batch-1 input per text."""
        out = []
        for text in texts:
            ids, mask = self.tokenizer([text])
            feed = {"input_ids": ids, "attention_mask": mask}
            if self.segments:  # an imported BERT export may take token_type_ids (one segment: zeros)
                feed["token_type_ids"] = np.zeros_like(ids)
            out.append(feed)
        return out

    def timed(self, feed: dict[str, np.ndarray]) -> float:
        started = time.perf_counter()
        self.session.run(None, feed)
        return (time.perf_counter() - started) * 1000.0


def measure(session: Session, texts: list[str]) -> Percentiles:
    """Batch-1 latency of one model alone over `texts` (the sweep's baseline of its reference)."""
    feeds = session.feeds(texts)
    for feed in feeds[:WARMUP_CALLS]:
        session.timed(feed)
    return Percentiles.of([session.timed(feed) for feed in feeds])


def measure_pair(candidate: Session, reference: Session, texts: list[str]) -> Pair:
    """Both models on every text, interleaved call by call, the order alternating."""
    ours, theirs = candidate.feeds(texts), reference.feeds(texts)
    for a, b in zip(ours[:WARMUP_CALLS], theirs[:WARMUP_CALLS], strict=True):
        candidate.timed(a)
        reference.timed(b)
    times: tuple[list[float], list[float]] = ([], [])
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if i % 2:
            times[1].append(reference.timed(b))
            times[0].append(candidate.timed(a))
        else:
            times[0].append(candidate.timed(a))
            times[1].append(reference.timed(b))
    return Pair(Percentiles.of(times[0]), Percentiles.of(times[1]))
