"""Re-distil the /classify student from the shadow log: new traffic → new student → gate → registry.

The run skeleton is `distill.runs`; this module supplies what /classify does differently: the window is
the teacher's logits on real traffic (deduplicated by text), its most recent slice is held out for the
gate, replay mixes in a share of the seed data and of older shadow records (against forgetting), the
trainer distils warm-started from the current student (soft targets everywhere, hard labels where the
seed data has them), and the candidate is exported like any student and gated on the recent hold-out
and the seed test split.

Example::

    result = redistill(Registry(state_dir), RedistillRecipe(since=t0), shadow_root=f"{state_dir}/shadow")
    result.manifest.ref if result.gate.passed else result.gate.reasons
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.classify.build import load_split, teacher_labelled, teacher_soft_labels
from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.io import load_classifier
from distill.classify.model import EncoderClassifier
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import load_runner
from distill.classify.student_export import ExportedStudent, export_student, student_manifest
from distill.classify.tokenize import BatchTokenizer
from distill.corpora import LabelledTexts, Split
from distill.gate import Figures, GateConfig
from distill.losses import kd_loss
from distill.registry import Calibration, Manifest
from distill.runs import Passed, RunContext, redistill_run
from distill.shadowlog.reader import read_shadow
from distill.trainer import train
from distill.workbench.calibrate import calibration_of


@dataclass(frozen=True)
class RedistillRecipe:
    """Hyper-parameters of one re-distillation run (all recorded in the new manifest)."""

    since: float | None = None  # shadow window start, epoch seconds (None: the whole log)
    until: float | None = None  # window end (None: now)
    holdout_fraction: float = 0.2  # newest share of the window, kept out of training for the gate
    seed_replay: float = 0.5  # seed-train texts mixed in per window record (against forgetting)
    old_shadow_replay: float = 0.25  # records from before `since` mixed in per window record
    epochs: int = 1  # at 10k records a second pass added 1.3 points of agreement for 90 s more
    min_steps: int = 60  # a small window is seen more than once: 12 warm-start steps made students worse
    batch_size: int = 32
    lr: float = 5e-5  # lower than the first build: a warm start only needs to move a little
    head_lr: float = 5e-4
    temperature: float = 2.0
    alpha: float = 0.9  # soft-term weight; rows without a label (all shadow rows) are soft only
    threads: int = 1  # leave the other core to serving
    seed: int = 0
    warm_start: bool = True  # from the parent's PyTorch weights
    checkpoint_every: int = 50  # training steps between checkpoints (a killed run resumes from the last)
    # Freezing the 30k-token embedding table (3/4 of the weights) saves a third of each step, but a
    # shifted domain brings words the student has barely seen, and a frozen table cannot learn them (a
    # 300-record warm start loses 5-10 points of agreement). Trained by default.
    freeze_embeddings: bool = False
    # Rehearsal only: rotate every target to the wrong class, producing a candidate the gate must refuse.
    corrupt_targets: bool = False
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass(frozen=True)
class TrainingSet:
    texts: list[str]
    teacher_logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,), -1 where there is no label


@dataclass(frozen=True)
class ShadowWindow:
    texts: list[str]  # unique input texts
    logits: np.ndarray  # (N, C) the teacher's
    stamps: list[float]  # epoch seconds of each text's last record

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Targets:
    train: TrainingSet  # window (older part), old shadow and seed replay
    hold_texts: list[str]  # the window's newest slice: the gate's recent traffic
    hold_teacher: np.ndarray  # (H, C)
    split: Split  # the seed data: replay, and its test split for the accuracy gate
    tokenizer: BatchTokenizer  # the parent's


@dataclass(frozen=True)
class Candidate:
    exported: ExportedStudent
    folder: Path
    test_texts: LabelledTexts
    calibration: Calibration | None


def window_records(
    shadow_root: str, task: str, teacher_ref: str, since: float | None, until: float | None
) -> tuple[list[str], np.ndarray, list[float]]:
    """Unique input texts of the task's window with the teacher's logits (redacted rows cannot be
    trained on)."""
    table = read_shadow(
        shadow_root,
        task,
        since=since,
        until=until,
        columns=["ts", "input_text", "teacher_logits", "teacher_model"],
    )
    by_text: dict[str, tuple[list[float], float]] = {}
    for row in table.to_pylist():
        if row["input_text"] and row["teacher_logits"] is not None and row["teacher_model"] == teacher_ref:
            by_text[row["input_text"]] = (row["teacher_logits"], row["ts"].timestamp())
    texts = list(by_text)
    if not texts:
        return [], np.zeros((0, 0), dtype=np.float32), []
    logits = np.asarray([by_text[t][0] for t in texts], dtype=np.float32)  # (N, C)
    return texts, logits, [by_text[t][1] for t in texts]


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n)[: min(n, k)]


class ClassifyRun:
    """/classify's part of a re-distillation run (`distill.runs.RunTask`)."""

    kind = "classify"
    recipe_name = "redistill-from-shadow"
    seed_recipe_type = ClassifyRecipe
    min_records = 20
    records = "shadow records"
    no_parent = "no student with a teacher to re-distil from; build one first (kdgate distill)"

    def window(self, run: RunContext[RedistillRecipe], since: float | None, until: float) -> ShadowWindow:
        return ShadowWindow(*window_records(run.shadow_root, run.task, run.teacher.ref, since, until))

    def targets(
        self, run: RunContext[RedistillRecipe], window: ShadowWindow
    ) -> tuple[Targets, dict[str, int]]:
        recipe, texts, logits = run.recipe, window.texts, window.logits
        rng = np.random.default_rng(recipe.seed)
        order = np.argsort(window.stamps, kind="stable")
        n_hold = max(1, int(len(texts) * recipe.holdout_fraction))
        train_idx, hold_idx = order[:-n_hold], order[-n_hold:]

        # Replay: older shadow records and labelled seed data.
        old_texts, old_logits, _ = (
            window_records(run.shadow_root, run.task, run.teacher.ref, None, recipe.since)
            if recipe.since is not None
            else ([], np.zeros((0, logits.shape[1])), [])
        )
        old_pick = _sample(len(old_texts), math.ceil(recipe.old_shadow_replay * len(train_idx)), rng)
        split = load_split(run.seed_recipe, run.teacher.labels)
        if not split.train.labelled:  # the user's unlabelled texts: gate on the teacher's answers
            label = partial(teacher_labelled, run.registry, run.teacher, log=run.log)
            split = replace(split, val=label(split.val), test=label(split.test))
        seed_pick = _sample(len(split.train.texts), math.ceil(recipe.seed_replay * len(train_idx)), rng)
        seed_part: LabelledTexts = split.train.take(sorted(seed_pick.tolist()))
        seed_logits = (
            teacher_soft_labels(run.registry, run.teacher, seed_part, run.log)
            if seed_part.texts
            else logits[:0]
        )
        data = TrainingSet(
            texts=[texts[i] for i in train_idx] + [old_texts[i] for i in old_pick] + seed_part.texts,
            teacher_logits=np.concatenate(
                [logits[train_idx], old_logits[old_pick].reshape(-1, logits.shape[1]), seed_logits]
            ).astype(np.float32),
            labels=np.asarray([-1] * (len(train_idx) + len(old_pick)) + seed_part.labels, dtype=np.int64),
        )
        if recipe.corrupt_targets:  # every target names the wrong class: a candidate the gate must refuse
            n_classes = data.teacher_logits.shape[1]
            data = replace(
                data,
                teacher_logits=np.roll(data.teacher_logits, 1, axis=1),
                labels=np.where(data.labels >= 0, (data.labels + 1) % n_classes, data.labels),
            )
        counts = {
            "shadow_window": len(train_idx),
            "holdout": n_hold,
            "old_shadow": len(old_pick),
            "seed": len(seed_part.texts),
        }
        tokenizer = BatchTokenizer.from_dir(run.registry.path(run.parent.ref), run.parent.max_length)
        return Targets(data, [texts[i] for i in hold_idx], logits[hold_idx], split, tokenizer), counts

    def train(
        self, run: RunContext[RedistillRecipe], targets: Targets, checkpoint: Path
    ) -> tuple[EncoderClassifier, dict[str, float]]:
        recipe, data = run.recipe, targets.train
        model = load_classifier(run.registry.path(run.parent.ref))
        if not recipe.warm_start:
            torch.manual_seed(
                recipe.seed
            )  # a resumed run must draw the same frozen tensors: not checkpointed
            model = type(model)(model.encoder.config, model.head.out_features)
        if recipe.freeze_embeddings:
            model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        soft = torch.from_numpy(data.teacher_logits)
        labels = torch.from_numpy(data.labels)

        def loss_fn(student_logits: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
            loss = kd_loss(student_logits, soft[batch], None, recipe.temperature, 1.0)
            labelled = labels[batch] >= 0
            if recipe.alpha < 1.0 and bool(labelled.any()):
                hard = F.cross_entropy(student_logits[labelled], labels[batch][labelled])
                loss = recipe.alpha * loss + (1.0 - recipe.alpha) * hard
            return loss

        steps_per_epoch = math.ceil(len(data.texts) / recipe.batch_size)
        summary = train(
            model,
            data.texts,
            targets.tokenizer,
            loss_fn,
            epochs=max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch)),
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            head_lr=recipe.head_lr,
            seed=recipe.seed,
            desc=f"{run.parent.name}: re-distil",
            checkpoint=checkpoint,
            checkpoint_every=recipe.checkpoint_every,
        )
        return model, summary

    def parent_figures(self, run: RunContext[RedistillRecipe], targets: Targets) -> Figures:
        parent = load_runner(run.registry, run.parent.ref, threads=run.recipe.threads)
        test = targets.split.test
        return _figures(
            parent.predict_logits(targets.hold_texts),
            targets.hold_teacher,
            parent.predict_logits(test.texts),
            test.labels,
        )

    def candidate(
        self, run: RunContext[RedistillRecipe], student: EncoderClassifier, targets: Targets, folder: Path
    ) -> tuple[Candidate, Figures]:
        tokenizer, test = targets.tokenizer, targets.split.test
        exported = export_student(
            student, folder, tokenizer, test.texts, test.labels, run.seed_recipe.int8_max_accuracy_drop
        )
        candidate_hold = exported.logits_of(folder, tokenizer, targets.hold_texts)
        figures = _figures(candidate_hold, targets.hold_teacher, exported.test_logits, test.labels)
        calibration = None
        if run.seed_recipe.calibrate:
            val = targets.split.val
            val_logits = exported.logits_of(folder, tokenizer, val.texts)
            calibration = calibration_of(val_logits, val.labels, exported.test_logits, test.labels)
            teacher = run.teacher.calibration
            figures = replace(
                figures,
                calibrated_ece=calibration.calibrated_ece,
                teacher_calibrated_ece=teacher.calibrated_ece if teacher is not None else None,
            )
        return Candidate(exported, folder, test, calibration), figures

    def lineage_data(self, run: RunContext[RedistillRecipe]) -> dict[str, object]:
        return {"seed_source": run.seed_recipe.seed_source}

    def manifest(self, run: RunContext[RedistillRecipe], candidate: Candidate, passed: Passed) -> Manifest:
        figures, verdict = passed.figures, passed.verdict
        exported = candidate.exported
        teacher_test = teacher_soft_labels(run.registry, run.teacher, candidate.test_texts, run.log)
        seed_compare = compare_to_teacher(teacher_test, exported.test_logits)
        metrics = {
            "test_accuracy": figures.seed_accuracy,
            # The rollout judge compares live disagreement with this: take it on recent traffic.
            "agreement": figures.recent_agreement,
            "disagreement": 1.0 - figures.recent_agreement,
            "mean_kl": figures.recent_kl,
            "seed_test_agreement": seed_compare["agreement"],
            "seed_test_mean_kl": seed_compare["mean_kl"],
            **exported.metrics,
            "gate": verdict.to_dict(),
            "train_seconds": run.elapsed(),
        }
        manifest = student_manifest(run.registry, exported, run.parent, passed.lineage, metrics)
        return manifest.model_copy(update={"calibration": candidate.calibration})


CLASSIFY_RUN = ClassifyRun()


# redistill(registry, recipe, shadow_root, parent_ref=None, log=STDERR) -> RunResult
redistill = partial(redistill_run, CLASSIFY_RUN)


def _figures(
    hold_logits: np.ndarray, hold_teacher: np.ndarray, test_logits: np.ndarray, test_labels: list[int]
) -> Figures:
    compared = compare_to_teacher(hold_teacher, hold_logits)
    return Figures(compared["agreement"], compared["mean_kl"], accuracy(test_logits, test_labels))
