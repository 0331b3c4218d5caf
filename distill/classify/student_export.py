"""Write a trained /classify student into a staging folder as the registry serves it.

PyTorch weights (the warm start of the next re-distillation), ONNX fp32 with a parity check against
PyTorch, and dynamic INT8 kept only when its accuracy stays within `int8_max_drop` of fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.classify.evaluate import accuracy
from distill.classify.export import check_parity, export_onnx, onnx_logits, quantize_int8, torch_logits
from distill.classify.io import save_classifier
from distill.classify.model import EncoderClassifier
from distill.classify.tokenize import TOKENIZER_FILE, BatchTokenizer
from distill.registry import Lineage, Manifest, Registry, Role, student_name

STUDENT_NAME = "classify-student"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
PARITY_TEXTS = 512  # PyTorch vs ONNX on this many test texts (the whole split cost ~10 s more)


@dataclass(frozen=True)
class ExportedStudent:
    files: list[str]  # served ONNX file first: runners load the first .onnx listed
    served_file: str
    test_logits: np.ndarray  # (N, C) of the served file on the test texts
    metrics: dict[str, object]

    def logits_of(self, directory: Path, tokenizer: BatchTokenizer, texts: list[str]) -> np.ndarray:
        return onnx_logits(directory / self.served_file, tokenizer, texts)


def export_student(
    model: EncoderClassifier,
    directory: Path,
    tokenizer: BatchTokenizer,
    test_texts: list[str],
    test_labels: list[int],
    int8_max_drop: float,
) -> ExportedStudent:
    files = save_classifier(model, directory, tokenizer)
    export_onnx(model, directory / ONNX_FP32, tokenizer)
    fp32 = onnx_logits(directory / ONNX_FP32, tokenizer, test_texts)
    sample = test_texts[:PARITY_TEXTS]
    parity = check_parity(torch_logits(model, tokenizer, sample), fp32[: len(sample)])
    quantize_int8(directory / ONNX_FP32, directory / ONNX_INT8)
    int8 = onnx_logits(directory / ONNX_INT8, tokenizer, test_texts)
    fp32_acc, int8_acc = accuracy(fp32, test_labels), accuracy(int8, test_labels)
    use_int8 = fp32_acc - int8_acc <= int8_max_drop
    if not use_int8:
        (directory / ONNX_INT8).unlink()
    served_file, served = (ONNX_INT8, int8) if use_int8 else (ONNX_FP32, fp32)
    metrics: dict[str, object] = {
        "fp32_test_accuracy": fp32_acc,
        "int8_test_accuracy": int8_acc,
        "quantized": "int8" if use_int8 else "fp32",
        "onnx_parity_max_abs_diff": parity.max_abs_diff,
        "onnx_parity_argmax_agreement": parity.argmax_agreement,
    }
    listed = [served_file, *files] + ([ONNX_FP32] if use_int8 else [])
    return ExportedStudent(listed, served_file, served, metrics)


def student_manifest(
    registry: Registry,
    exported: ExportedStudent,
    like: Manifest,
    lineage: Lineage,
    metrics: dict[str, object],
) -> Manifest:
    """The next student version of `like`'s task, with its labels and tokenizer settings."""
    name = student_name(like.task)
    return Manifest(
        name=name,
        version=registry.next_version(name),
        task=like.task,
        task_kind=like.task_kind,
        role=Role.STUDENT,
        format="onnx",
        files=exported.files,
        labels=like.labels,
        tokenizer=TOKENIZER_FILE,
        max_length=like.max_length,
        lineage=lineage,
        metrics=metrics,
    )
