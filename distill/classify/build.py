"""Builds the /classify teacher and its distilled ONNX student into the registry.

Reads top to bottom: split the seed data → fine-tune the teacher → export it → label the student's
training text with the teacher (cached) → distil the student (Hinton KD) → export, check parity,
quantize when INT8 keeps accuracy → register with lineage and offline figures.

Example::

    registry = Registry(Path(".kdgate"))
    ensure_default_classify_models(registry, ClassifyRecipe())   # builds only what is missing
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from distill.classify.assistant import assistant_for
from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.export import check_parity, export_onnx, onnx_logits, torch_logits
from distill.classify.io import base_tokenizer, pretrained_classifier, save_classifier
from distill.classify.kd import distil, needs_teacher_model
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import load_runner
from distill.classify.student_export import (
    ONNX_FP32,
    STUDENT_NAME,
    export_student,
    student_manifest,
)
from distill.classify.student_start import feature_teacher, student_init, with_student_start
from distill.classify.tokenize import TOKENIZER_FILE, BatchTokenizer
from distill.corpora import LabelledTexts, Split, load_dataset, split_dataset
from distill.datafile import read_pinned
from distill.gate import Figures, GateConfig, GateResult, Refused, gate
from distill.progress import ProgressBar
from distill.registry import Calibration, Lineage, Manifest, Registry, Role, TaskKind, student_name
from distill.trainer import train
from distill.workbench.calibrate import calibration_of
from distill.workbench.prune import prune_student
from durablefs import write_with

TEACHER_NAME = "classify-teacher"

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_split(recipe: ClassifyRecipe, label_names: list[str] | None = None) -> Split:
    """The recipe's seed data split: the user's file (its labels are `label_names`, the teacher's), else
    the bundled corpus; eval parts capped as the recipe says."""
    data = (
        load_dataset(recipe.dataset)
        if recipe.data_file is None
        else read_pinned(
            Path(recipe.data_file),
            recipe.data_sha256,
            label_names or [],
            recipe.text_column,
            recipe.label_column,
        )
    )
    split = split_dataset(data, recipe.seed, recipe.split)
    if recipe.eval_examples is not None:
        cap = list(range(min(recipe.eval_examples, len(split.test.texts))))
        split = replace(split, val=split.val.take(cap[: len(split.val.texts)]), test=split.test.take(cap))
    return split


def _head(data: LabelledTexts, n: int | None) -> LabelledTexts:
    return data if n is None else data.take(list(range(min(n, len(data.texts)))))


def _data_lineage(
    recipe: ClassifyRecipe, split: Split, train_part: LabelledTexts, labelled: bool = True
) -> dict[str, object]:
    return {
        "source": recipe.seed_source,
        "sha256": recipe.data_sha256,
        "labels": "given" if labelled else "none: pure KD, evaluated against the teacher's answers",
        "split": {"fractions": list(recipe.split), "seed": recipe.seed},
        "sizes": {"train": len(train_part.texts), "val": len(split.val.texts), "test": len(split.test.texts)},
        "train_fingerprint": train_part.fingerprint(),
    }


def build_teacher(registry: Registry, recipe: ClassifyRecipe, log: Log = _stderr) -> Manifest:
    """Fine-tunes all-MiniLM-L6-v2 end to end (embeddings frozen) and registers `classify-teacher@N`."""
    recipe = recipe.validated()
    torch.set_num_threads(recipe.threads)
    split = load_split(recipe)
    train_part = _head(split.train, recipe.teacher_examples)
    started = time.monotonic()
    model = pretrained_classifier(len(split.train.label_names))
    model.encoder.embeddings.requires_grad_(False)
    labels = torch.tensor(train_part.labels)
    tokenizer = BatchTokenizer(base_tokenizer(), recipe.max_length)
    summary = train(
        model,
        train_part.texts,
        tokenizer,
        lambda logits, batch: torch.nn.functional.cross_entropy(logits, labels[batch]),
        epochs=recipe.teacher_epochs,
        batch_size=recipe.batch_size,
        lr=recipe.teacher_lr,
        head_lr=recipe.teacher_head_lr,
        seed=recipe.seed,
        desc=f"{TEACHER_NAME}: fine-tune",
    )
    with registry.stage(TEACHER_NAME) as staging:
        files = save_classifier(model, staging.path, tokenizer)
        # Also kept as ONNX fp32: labelling for distillation runs ~2x faster on it, and it is the
        # fairest fast teacher to benchmark against.
        export_onnx(model, staging.path / ONNX_FP32, tokenizer)
        parity = check_parity(
            torch_logits(model, tokenizer, split.test.texts[:256]),
            onnx_logits(staging.path / ONNX_FP32, tokenizer, split.test.texts[:256]),
        )
        test_logits = onnx_logits(staging.path / ONNX_FP32, tokenizer, split.test.texts)
        val_logits = onnx_logits(staging.path / ONNX_FP32, tokenizer, split.val.texts)
        metrics = {
            "test_accuracy": accuracy(test_logits, split.test.labels),
            "val_accuracy": accuracy(val_logits, split.val.labels),
            "onnx_parity_max_abs_diff": parity.max_abs_diff,
            "train_seconds": round(time.monotonic() - started, 1),
            "final_train_loss": summary["final_loss"],
        }
        manifest = Manifest(
            name=TEACHER_NAME,
            version=registry.next_version(TEACHER_NAME),
            task="classify",
            task_kind=TaskKind.CLASSIFY,
            role=Role.TEACHER,
            format="torch",
            files=[*files, ONNX_FP32],
            labels=split.train.label_names,
            tokenizer=TOKENIZER_FILE,
            max_length=recipe.max_length,
            lineage=Lineage(
                teacher=None,
                data=_data_lineage(recipe, split, train_part),
                recipe={"name": "finetune-minilm-l6", **asdict(recipe)},
                seed=recipe.seed,
            ),
            metrics=metrics,
            calibration=_calibration(recipe, split, val_logits, test_logits),
        )
        staging.commit(manifest)
    log(
        f"registered {manifest.ref}: test accuracy {metrics['test_accuracy']:.4f} "
        f"({metrics['train_seconds']:.0f} s)"
    )
    return manifest


def teacher_soft_labels(
    registry: Registry, teacher: Manifest, texts: LabelledTexts, log: Log = _stderr
) -> np.ndarray:
    """Teacher logits (N, C) for `texts`, computed once and cached by teacher ref + text fingerprint."""
    cache = registry.root.parent / "cache" / "soft_labels" / teacher.ref / f"{texts.fingerprint()}.npy"
    if cache.exists():
        return np.load(cache)
    # The teacher's parity-checked ONNX copy labels ~2x faster than PyTorch; the runner length-sorts.
    runner = load_runner(registry, teacher.ref, threads=torch.get_num_threads(), prefer_onnx=True)
    log(f"labelling {len(texts.texts)} texts with {teacher.ref}")
    chunk = 2048  # one progress step
    parts = []
    with ProgressBar(total=len(texts.texts), desc="teacher soft labels", unit="text") as bar:
        for start in range(0, len(texts.texts), chunk):
            parts.append(runner.predict_logits(texts.texts[start : start + chunk]))
            bar.update(len(parts[-1]))
    logits = np.concatenate(parts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_with(cache, lambda handle: np.save(handle, logits))
    return logits


def build_student(
    registry: Registry,
    recipe: ClassifyRecipe,
    teacher_ref: str,
    log: Log = _stderr,
    gate_config: GateConfig | None = None,
    sweep: dict[str, object] | None = None,
) -> Manifest:
    """Distils the next student of the teacher's task from `teacher_ref` on the recipe's seed data (a
    user's file, or a bundled corpus) and registers it as ONNX (INT8 when it holds up).

    With `gate_config` the candidate must pass the gate on the test split first (`Refused` otherwise,
    nothing registered); `sweep` (its id and point) goes into the lineage of a student a sweep picked.

    Unlabelled data is pure KD (alpha 1), and the figures that need labels (accuracy, calibration, the
    INT8 check) are taken against the teacher's own answers. The student is the first `student_layers`
    layers of the recipe's `student_base`, else of the teacher (kdgate's own build, or a BERT-architecture
    import), else of the packaged MiniLM. With the recipe's `via` it distils on that assistant's logits
    instead of the teacher's (progressive KD; `distill.classify.progressive`)."""
    recipe = recipe.validated()
    torch.set_num_threads(recipe.threads)
    teacher = registry.get(teacher_ref)
    recipe = with_student_start(registry, teacher, recipe)
    split = load_split(recipe, teacher.labels)
    data_labelled = split.train.labelled
    if not data_labelled:
        split = _labelled_by_teacher(registry, teacher, split, log)
        recipe = replace(recipe, alpha=1.0)
    train_part = _head(split.train, recipe.student_examples)
    started = time.monotonic()
    # Progressive KD: the assistant's logits are the soft targets; every figure stays the teacher's.
    assistant = assistant_for(registry, teacher, recipe)
    soft = torch.from_numpy(teacher_soft_labels(registry, assistant or teacher, train_part, log))  # (N, C)
    labels = torch.tensor(train_part.labels)
    model, tokenizer = student_init(registry, teacher, recipe)
    teacher_model = feature_teacher(registry, teacher, tokenizer) if needs_teacher_model(recipe) else None
    pruned = prune_student(model, tokenizer, train_part.texts, soft, labels, recipe)
    desc = f"{student_name(teacher.task)}: distil"
    summary = distil(model, tokenizer, train_part.texts, soft, labels, recipe, desc, teacher=teacher_model)
    teacher_test = teacher_soft_labels(registry, teacher, split.test, log)
    with registry.stage(student_name(teacher.task)) as staging:
        exported = export_student(
            model, staging.path, tokenizer, split.test.texts, split.test.labels, recipe.int8_max_accuracy_drop
        )
        test_accuracy = accuracy(exported.test_logits, split.test.labels) if data_labelled else None
        compared = compare_to_teacher(teacher_test, exported.test_logits)
        metrics = {
            "test_accuracy": test_accuracy,
            **compared,
            **exported.metrics,
            "teacher_test_accuracy": teacher.metrics.get("test_accuracy"),
            "train_seconds": round(time.monotonic() - started, 1),
            "final_train_loss": summary["final_loss"],
        }
        lineage = Lineage(
            teacher=teacher.ref,
            via=recipe.via,
            data=_data_lineage(recipe, split, train_part, data_labelled),
            recipe={"name": "hinton-kd", **asdict(recipe)} | ({"pruning": pruned} if pruned else {}),
            seed=recipe.seed,
            sweep=sweep,
        )
        val_logits = exported.logits_of(staging.path, tokenizer, split.val.texts)
        calibration = _calibration(recipe, split, val_logits, exported.test_logits)
        if gate_config is not None:
            # Unlabelled data: the labels are the teacher's answers, so accuracy is agreement.
            figures = Figures(
                compared["agreement"],
                compared["mean_kl"],
                compared["agreement"] if test_accuracy is None else test_accuracy,
                calibrated_ece=calibration.calibrated_ece if calibration else None,
                teacher_calibrated_ece=teacher.calibration.calibrated_ece if teacher.calibration else None,
            )
            metrics["gate"] = _gated(figures, gate_config).to_dict()
        manifest = student_manifest(registry, exported, teacher, lineage, metrics)
        manifest = staging.commit(manifest.model_copy(update={"calibration": calibration}))
    accuracy_note = f"test accuracy {metrics['test_accuracy']:.4f}, " if data_labelled else ""
    log(
        f"registered {manifest.ref} ({metrics['quantized']}): {accuracy_note}"
        f"agreement {metrics['agreement']:.4f}, KL {metrics['mean_kl']:.4f} "
        f"({metrics['train_seconds']:.0f} s)"
    )
    return manifest


def teacher_labelled(registry: Registry, teacher: Manifest, part: LabelledTexts, log: Log) -> LabelledTexts:
    """Unlabelled texts labelled with the teacher's answers (its argmax): the reference that accuracy,
    calibration and the INT8 check are measured against when the user's data has no labels."""
    answers = teacher_soft_labels(registry, teacher, part, log).argmax(-1)
    return replace(part, labels=[int(a) for a in answers])


def _labelled_by_teacher(registry: Registry, teacher: Manifest, split: Split, log: Log) -> Split:
    parts = (split.train, split.val, split.test)
    return Split(*(teacher_labelled(registry, teacher, part, log) for part in parts))


def _gated(figures: Figures, config: GateConfig) -> GateResult:
    """The gate on the test split, without a parent: a student picked from a sweep may trade agreement
    for speed on purpose, so it meets the absolute thresholds and the teacher's calibration, not the
    current student's figures. Raises `Refused` with the reasons."""
    verdict = gate(figures, None, config)
    if not verdict.passed:
        raise Refused(verdict)
    return verdict


def _calibration(
    recipe: ClassifyRecipe, split: Split, val_logits: np.ndarray, test_logits: np.ndarray
) -> Calibration | None:
    if not recipe.calibrate:
        return None
    return calibration_of(val_logits, split.val.labels, test_logits, split.test.labels)


def ensure_default_classify_models(
    registry: Registry, recipe: ClassifyRecipe, log: Log = _stderr
) -> tuple[Manifest, Manifest]:
    """Builds the default teacher and student if the registry has none; reuses them otherwise."""
    teacher = registry.latest(TEACHER_NAME) or build_teacher(registry, recipe, log)
    student = registry.latest(STUDENT_NAME) or build_student(registry, recipe, teacher.ref, log)
    return teacher, student
