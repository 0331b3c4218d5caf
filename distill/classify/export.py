"""ONNX export of a /classify encoder, the export parity check, and dynamic INT8 quantization."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from distill.classify.tokenize import BatchTokenizer


class ExportParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    argmax_agreement: float
    n: int


def export_onnx(model: torch.nn.Module, path: Path, tokenizer: BatchTokenizer) -> None:
    """Exports a `(input_ids, attention_mask) -> logits` module with dynamic batch and sequence axes
    (the TorchScript exporter: no onnxscript needed)."""
    model.eval()
    ids, mask = tokenizer(["a short example", "and a somewhat longer example sentence to trace"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in HF attention code
        torch.onnx.export(
            model,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "logits": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )


def onnx_logits(path: Path, tokenizer: BatchTokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start : start + batch_size])
        chunks.append(session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0])
    return np.concatenate(chunks).astype(np.float32)


@torch.no_grad()
def torch_logits(
    model: torch.nn.Module, tokenizer: BatchTokenizer, texts: list[str], batch_size: int = 64
) -> np.ndarray:
    model.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start : start + batch_size])
        chunks.append(model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    return np.concatenate(chunks).astype(np.float32)


def check_parity(reference: np.ndarray, exported: np.ndarray, atol: float = 1e-4) -> Parity:
    """allclose on logits and identical argmax on every input, as minGPT checks against a reference."""
    parity = Parity(
        max_abs_diff=float(np.abs(reference - exported).max()),
        argmax_agreement=float((reference.argmax(-1) == exported.argmax(-1)).mean()),
        n=len(reference),
    )
    if not np.allclose(reference, exported, atol=atol, rtol=1e-4) or parity.argmax_agreement < 1.0:
        raise ExportParityError(
            f"ONNX export differs from PyTorch: max |Δlogit| {parity.max_abs_diff:.2e}, "
            f"argmax agreement {parity.argmax_agreement:.4f} over {parity.n} inputs"
        )
    return parity


class _QuantizerChatter(logging.Filter):
    """Drops ONNX Runtime's quantizer messages below ERROR: it logs a line per node on the root logger,
    hundreds per model, and advice about pre-processing that a dynamic INT8 export does not need."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime/quantization" not in record.pathname


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic (weight-only INT8, activations quantized on the fly) quantization: no calibration data."""
    chatter = _QuantizerChatter()
    root = logging.getLogger()  # where the quantizer logs (`logging.info`, not a named logger)
    root.addFilter(chatter)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(chatter)
