"""Imports a user's /classify model into the registry: a Hugging Face folder with a
sequence-classification head (any encoder `AutoModelForSequenceClassification` loads), or an ONNX file
with its `tokenizer.json` and label names.

A PyTorch model is exported to ONNX and the export's parity is checked as for built models; the ONNX file is
what the gateway serves. Its weights are kept beside it (`hf/`): a student can start from them, cut from an
imported teacher or from an imported student (`kdgate distill --student REF`). Every import is
measured (size, p50 latency at batch 1) and records its provenance. Files are written into a staging folder
and renamed into place, so a refused or failed import leaves nothing registered.

Example::

    manifest = import_classifier(Registry(state_dir), Path("my-bert-sentiment"), role=Role.TEACHER)
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification

from distill.classify.export import check_parity, export_onnx, onnx_logits, torch_logits
from distill.classify.runner import OnnxClassifierRunner
from distill.classify.tokenize import TOKENIZER_FILE, BatchTokenizer
from distill.importing import (
    ImportRefused,
    check_task,
    default_name,
    hf_config,
    one_line,
    provenance,
    require_file,
)
from distill.registry import Lineage, Manifest, Registry, Role, TaskKind

ONNX_FILE = "model.onnx"
WEIGHTS_DIR = "hf"  # the imported Hugging Face folder's config, weights and tokenizer
WEIGHT_FILES = (
    "config.json",
    TOKENIZER_FILE,
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
)
# Varied in length and content: parity and latency are checked on them.
SAMPLE_TEXTS = [
    "What a lovely day it has been!",
    "The markets fell sharply after the announcement of new tariffs on steel imports.",
    "meh",
    "I can't believe they cancelled the show, absolutely gutted :(",
    "The striker scored twice in the second half to win the cup final for his club.",
    "New phone, same old battery problems. Support was useless and the refund took weeks to arrive.",
    "ok",
    "Parliament will vote on the budget next Tuesday, ministers said.",
]
LATENCY_RUNS = 30
ALLOWED_ONNX_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


def import_classifier(
    registry: Registry,
    source: Path,
    *,
    role: Role,
    task: str = "classify",
    name: str | None = None,
    labels: list[str] | None = None,
    max_length: int = 128,
) -> Manifest:
    """Registers the model at `source` as `name@<next version>` in `task`; raises `ImportRefused`."""
    source = Path(source)
    check_task(registry, task, TaskKind.CLASSIFY)
    if not source.exists():
        raise ImportRefused(f"{source} does not exist", "pass a Hugging Face model folder or an .onnx file")
    teacher = registry.latest_of(task, Role.TEACHER)
    name = name or default_name(task, role, source)
    with registry.stage(name) as staging:
        files = [ONNX_FILE, TOKENIZER_FILE]
        if source.is_dir():
            labels, max_length, parity = _export_hf_folder(source, staging.path, labels, max_length)
            files += _keep_weights(source, staging.path)
            read = [p for p in source.rglob("*") if p.is_file()]
        else:
            labels = _copy_onnx_file(source, staging.path, labels, max_length)
            parity = {}
            read = [source, source.parent / TOKENIZER_FILE]
        if teacher is not None and labels != teacher.labels:
            if role is Role.STUDENT:
                raise ImportRefused(
                    f"the student's labels {labels} differ from its teacher {teacher.ref}'s {teacher.labels}",
                    "a student must predict the same labels in the same order as the teacher of its task",
                )
            raise ImportRefused(
                f"the labels {labels} differ from those of task {task!r} ({teacher.ref}: {teacher.labels})",
                "a new teacher of a task must keep its labels; a model with other labels is another task",
            )
        manifest = Manifest(
            name=name,
            version=registry.next_version(name),
            task=task,
            task_kind=TaskKind.CLASSIFY,
            role=role,
            format="onnx",
            files=files,
            labels=labels,
            tokenizer=TOKENIZER_FILE,
            max_length=max_length,
            lineage=Lineage(
                teacher=teacher.ref if teacher is not None and role is Role.STUDENT else None,
                data=provenance(source, read),
                recipe={"name": "import", "from": "huggingface" if source.is_dir() else "onnx"},
            ),
        )
        metrics = {**parity, **measure(manifest, staging.path)}
        return staging.commit(manifest.model_copy(update={"metrics": metrics}))


def imported_weights(registry: Registry, manifest: Manifest) -> Path | None:
    """The Hugging Face folder an imported model kept (None for an ONNX import or a built model)."""
    folder = registry.path(manifest.ref) / WEIGHTS_DIR
    return folder if (folder / "config.json").is_file() else None


def _keep_weights(source: Path, staging: Path) -> list[str]:
    """Copies the folder's config, tokenizer and weights into `staging/hf`; their relative names."""
    (staging / WEIGHTS_DIR).mkdir()
    kept = sorted({path.name for pattern in WEIGHT_FILES for path in source.glob(pattern) if path.is_file()})
    for name in kept:
        shutil.copyfile(source / name, staging / WEIGHTS_DIR / name)
    return [f"{WEIGHTS_DIR}/{name}" for name in kept]


def measure(manifest: Manifest, directory: Path) -> dict[str, float]:
    """Size of the served file and p50 latency of one short text at batch 1, one thread."""
    runner = OnnxClassifierRunner(manifest, directory, threads=1)
    runner.predict_logits(SAMPLE_TEXTS[:1])  # first call pays for graph set-up
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        runner.predict_logits(SAMPLE_TEXTS[:1])
        times.append((time.perf_counter() - started) * 1000.0)
    return {
        "size_mb": round((directory / ONNX_FILE).stat().st_size / 1e6, 2),
        "p50_ms": round(statistics.median(times), 3),
    }


def _tokenizer(folder: Path, max_length: int) -> BatchTokenizer:
    path = require_file(folder, TOKENIZER_FILE)
    try:
        return BatchTokenizer.from_dir(folder, max_length)
    except Exception as exc:  # the tokenizers library raises its own Exception type on a bad file
        raise ImportRefused(f"cannot read {path} ({one_line(exc)})", "save the tokenizer again") from exc


def _export_hf_folder(
    source: Path, staging: Path, labels: list[str] | None, max_length: int
) -> tuple[list[str], int, dict[str, float]]:
    """Loads the folder's classifier, exports it to ONNX in `staging`, checks parity; returns its
    labels, the max length it takes and the parity figures."""
    config = hf_config(source, TaskKind.CLASSIFY)
    head = [str(config.id2label[i]) for i in range(config.num_labels)]
    if labels is not None and len(labels) != len(head):
        raise ImportRefused(
            f"{len(labels)} labels given but the head has {len(head)} outputs",
            "pass one label per output in order, or none to use config.id2label",
        )
    max_length = min(max_length, int(getattr(config, "max_position_embeddings", max_length)))
    tokenizer = _tokenizer(source, max_length)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=True).eval()
    except Exception as exc:  # safetensors, torch and transformers each raise their own on a bad file
        raise ImportRefused(
            f"cannot load the weights in {source} ({one_line(exc)})",
            "the file may be truncated or corrupt: save the model again",
        ) from exc
    logits_only = LogitsOnly(model).eval()
    export_onnx(logits_only, staging / ONNX_FILE, tokenizer)
    reference = torch_logits(logits_only, tokenizer, SAMPLE_TEXTS)
    parity = check_parity(reference, onnx_logits(staging / ONNX_FILE, tokenizer, SAMPLE_TEXTS))
    shutil.copyfile(source / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    figures = {"onnx_parity_max_abs_diff": parity.max_abs_diff, "onnx_parity_argmax_agreement": 1.0}
    return labels or head, max_length, figures


def _copy_onnx_file(source: Path, staging: Path, labels: list[str] | None, max_length: int) -> list[str]:
    """Checks an ONNX classifier (inputs, output width, finite logits) and copies it with its tokenizer."""
    if source.suffix != ".onnx":
        raise ImportRefused(
            f"{source} is neither a model folder nor an .onnx file",
            "pass a Hugging Face model folder or an ONNX export",
        )
    if not labels:
        raise ImportRefused(
            f"an ONNX file carries no label names ({source.name})", "pass them in output order with --labels"
        )
    tokenizer = _tokenizer(source.parent, max_length)
    try:
        session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types on a bad file
        raise ImportRefused(
            f"cannot load {source} ({one_line(exc)})",
            "the file may be truncated or corrupt: export it again",
        ) from exc
    inputs = {i.name for i in session.get_inputs()}
    if not {"input_ids", "attention_mask"} <= inputs or not inputs <= ALLOWED_ONNX_INPUTS:
        raise ImportRefused(
            f"{source.name} takes inputs {sorted(inputs)}",
            "export it with inputs input_ids and attention_mask (token_type_ids optional)",
        )
    ids, mask = tokenizer(SAMPLE_TEXTS)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    logits = np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in inputs})[0])
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ImportRefused(
            f"{len(labels)} labels given but the model outputs {logits.shape[1:]} scores per text",
            "pass one label per output, in output order",
        )
    if not np.isfinite(logits).all():
        raise ImportRefused(f"{source.name} outputs non-finite scores", "check the export")
    shutil.copyfile(source, staging / ONNX_FILE)
    shutil.copyfile(source.parent / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    return list(labels)


class LogitsOnly(torch.nn.Module):
    """A Hugging Face classifier seen as `(input_ids, attention_mask) -> logits`, the shape our export,
    parity check and runners use (token_type_ids default to zeros inside the model)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
