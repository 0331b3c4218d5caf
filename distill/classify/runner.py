"""Runners: one small interface to run any registered /classify model on a batch of texts.

Example::

    runner = load_runner(Registry(state_dir), "classify-student@1", threads=1)
    runner.predict_batch(["what a lovely day"])       # (1, C) probabilities
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from distill.classify.evaluate import softmax
from distill.classify.faults import FaultyRunner
from distill.classify.tokenize import BatchTokenizer
from distill.registry import Manifest, Registry, RegistryError, TaskKind

ONNX_COPY = "model.onnx"  # the parity-checked ONNX export a PyTorch teacher keeps beside its weights


class Runner(Protocol):
    manifest: Manifest

    @property
    def ref(self) -> str: ...

    def predict_logits(self, texts: list[str]) -> np.ndarray: ...

    def predict_batch(self, texts: list[str]) -> np.ndarray: ...


def probabilities(manifest: Manifest, logits: np.ndarray) -> np.ndarray:
    """The probabilities a model serves: the softmax of its logits, divided first by its calibration
    temperature when it has one. Shadow scoring compares raw logits, so KL keeps its meaning."""
    temperature = manifest.calibration.temperature if manifest.calibration is not None else 1.0
    return softmax(logits / temperature)


def length_chunks(lengths: list[int], size: int, slack: float = 0.1) -> list[list[int]]:
    """The model calls for texts of token `lengths`: their indices sorted by length, at most `size` per
    call, and a new call wherever the next text is more than `slack` longer than the call's shortest, so
    no call pads a text by more than `slack`.

    >>> length_chunks([30, 10, 32, 11, 31], size=8)
    [[1, 3], [0, 4, 2]]
    """
    chunks: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        chunk = chunks[-1] if chunks else None
        if chunk is None or len(chunk) == size or lengths[index] > lengths[chunk[0]] * (1 + slack):
            chunks.append([index])
        else:
            chunk.append(index)
    return chunks


class _ClassifierRunner:
    """Shared batching: a batch runs in length-sorted chunks that pad little, its order restored."""

    # Texts per model call, and where a call ends. A call's cost per text does not fall with its size
    # (MiniLM teacher, ONNX, one thread, tweets: 15.2 ms alone, 14.5 in length-sorted chunks of 8, 20.3
    # in sorted chunks of 32, 22.5 unsorted): a bigger batch's activations leave a 1 MB L2 cache, and
    # every text is padded to the call's longest. So a serving batch of a few tweets is not one call
    # either: the tiny INT8 student (one thread, tweets, batches of 8) cost 6.1-6.5 ms a text in one
    # padded call, 5.6-5.7 one text at a time, and 5.5-5.6 in chunks cut at `slack` (10%).
    chunk_size = 8
    slack = 0.1

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        self.manifest = manifest
        self.tokenizer = BatchTokenizer.from_dir(directory, manifest.max_length)

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode(texts)
        if len(encodings) == 1:
            return self._logits(*self.tokenizer.pad(encodings))
        out = np.empty((len(texts), len(self.manifest.labels)), dtype=np.float32)
        for chunk in length_chunks([len(e.ids) for e in encodings], self.chunk_size, self.slack):
            out[chunk] = self._logits(*self.tokenizer.pad([encodings[i] for i in chunk]))
        return out

    def predict_batch(self, texts: list[str]) -> np.ndarray:
        return probabilities(self.manifest, self.predict_logits(texts))


class TorchClassifierRunner(_ClassifierRunner):
    """The PyTorch encoder. torch's thread count is per process: the last runner loaded sets it.
    torch (and transformers, under `modelio`) is imported here, not by the module: an ONNX-only process
    such as the shadow teacher's starts in a fraction of the time without them."""

    def __init__(self, manifest: Manifest, directory: Path, threads: int = 1) -> None:
        import torch

        from distill.classify.io import load_classifier

        super().__init__(manifest, directory)
        torch.set_num_threads(threads)
        self.model = load_classifier(directory)

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch  # already loaded by __init__: a lookup in sys.modules

        with torch.no_grad():
            return self.model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy().astype(np.float32)


class OnnxClassifierRunner(_ClassifierRunner):
    """ONNX Runtime session with its own intra-op thread count (not shared with torch)."""

    def __init__(
        self, manifest: Manifest, directory: Path, threads: int = 1, model_file: str | None = None
    ) -> None:
        super().__init__(manifest, directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_file = model_file or next(f for f in manifest.files if f.endswith(".onnx"))
        self.session = ort.InferenceSession(
            str(directory / onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # An imported BERT-style export may also take token_type_ids (zeros: one segment).
        self._segments = any(i.name == "token_type_ids" for i in self.session.get_inputs())
        self._output = self.session.get_outputs()[0].name

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._segments:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (logits,) = self.session.run([self._output], feeds)
        return np.asarray(logits, dtype=np.float32)


def load_runner(registry: Registry, ref: str, threads: int = 1, prefer_onnx: bool = False) -> Runner:
    """Builds the runner a manifest asks for; a fault model wraps the runner of the model it names.

    `prefer_onnx`: a PyTorch model that also ships a parity-checked `model.onnx` (the teacher does) runs
    on ONNX Runtime instead — about twice as fast on CPU, with its own thread count.
    """
    manifest = registry.get(ref)
    directory = registry.path(ref)
    if manifest.kind == "fault":
        if manifest.fault is None:
            raise RegistryError(f"{ref} is a fault model without a fault spec")
        inner = load_runner(registry, manifest.fault.wraps, threads, prefer_onnx)
        return FaultyRunner(manifest, inner, manifest.fault)
    if manifest.task_kind != TaskKind.CLASSIFY:
        raise RegistryError(f"{ref} is a {manifest.task_kind} model, not a classifier")
    if manifest.format == "torch":
        if prefer_onnx and ONNX_COPY in manifest.files:
            return OnnxClassifierRunner(manifest, directory, threads, model_file=ONNX_COPY)
        return TorchClassifierRunner(manifest, directory, threads)
    if manifest.format == "onnx":
        return OnnxClassifierRunner(manifest, directory, threads)
    raise RegistryError(f"{ref}: unknown format {manifest.format!r}")
