"""Re-distil the /classify student from the shadow log: new traffic → new student → gate → registry.

Reads top to bottom: take the shadow window (teacher logits on real traffic), hold out its most recent
slice for the gate, mix in a replay share of the seed data and of older shadow records (against
forgetting), warm-start from the current student, distil (soft targets everywhere, hard labels where
the seed data has them), export like any student, then gate against the parent: only a candidate that
passes is registered, with its data window and gate figures in the lineage.

Example::

    result = redistill(Registry(state_dir), RedistillRecipe(since=t0), shadow_root=f"{state_dir}/shadow")
    result.manifest.ref if result.gate.passed else result.gate.reasons
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.classify.build import STUDENT_NAME, ClassifyRecipe, Log, _stderr, load_split, teacher_soft_labels
from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.io import load_classifier
from distill.classify.runner import load_runner
from distill.classify.student_export import export_student, student_manifest
from distill.classify.tokenize import BatchTokenizer
from distill.corpora import LabelledTexts
from distill.gate import Figures, GateConfig, GateResult, gate
from distill.losses import kd_loss
from distill.registry import Lineage, Manifest, Registry
from distill.shadowlog.reader import read_shadow
from distill.trainer import train
from durablefs import write_json

RUNS_FILE = "runs.jsonl"
PIN_MAX_AGE_S = 86400.0


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
class RedistillResult:
    gate: GateResult
    manifest: Manifest | None  # None when the gate refused the candidate
    data: dict[str, object]
    seconds: float
    training: dict[str, float]  # the trainer's summary: steps, final loss, step it resumed from


@dataclass(frozen=True)
class TrainingSet:
    texts: list[str]
    teacher_logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,), -1 where there is no label


def window_records(
    shadow_root: str, teacher_ref: str, since: float | None, until: float | None
) -> tuple[list[str], np.ndarray, list[float]]:
    """Unique input texts of the window with the teacher's logits (redacted rows cannot be trained on)."""
    table = read_shadow(
        shadow_root,
        "classify",
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


def redistill(
    registry: Registry,
    recipe: RedistillRecipe,
    shadow_root: str,
    parent_ref: str | None = None,
    log: Log = _stderr,
) -> RedistillResult:
    started = time.monotonic()
    torch.set_num_threads(recipe.threads)
    rng = np.random.default_rng(recipe.seed)
    parent = registry.get(parent_ref) if parent_ref else registry.latest(STUDENT_NAME)
    if parent is None or parent.lineage.teacher is None:
        raise ValueError("no student with a teacher to re-distil from; build one first (kdgate distill)")
    teacher = registry.get(parent.lineage.teacher)
    run = InterruptibleRun.open(registry, parent, recipe)  # an interrupted identical run: same window
    until = run.until

    # 1. The window, its newest slice held out for the gate.
    texts, logits, stamps = window_records(shadow_root, teacher.ref, recipe.since, until)
    if len(texts) < 20:
        run.finish()  # nothing to resume: the next run takes a fresh window
        raise ValueError(f"only {len(texts)} usable shadow records in the window; need at least 20")
    order = np.argsort(stamps, kind="stable")
    n_hold = max(1, int(len(texts) * recipe.holdout_fraction))
    train_idx, hold_idx = order[:-n_hold], order[-n_hold:]
    hold_texts, hold_teacher = [texts[i] for i in hold_idx], logits[hold_idx]

    # 2. Replay: older shadow records and labelled seed data.
    old_texts, old_logits, _ = (
        window_records(shadow_root, teacher.ref, None, recipe.since)
        if recipe.since is not None
        else ([], np.zeros((0, logits.shape[1])), [])
    )
    old_pick = _sample(len(old_texts), math.ceil(recipe.old_shadow_replay * len(train_idx)), rng)
    seed_recipe = _seed_recipe(parent)
    split = load_split(seed_recipe)
    seed_pick = _sample(len(split.train.texts), math.ceil(recipe.seed_replay * len(train_idx)), rng)
    seed_part: LabelledTexts = split.train.take(sorted(seed_pick.tolist()))
    seed_logits = teacher_soft_labels(registry, teacher, seed_part, log) if seed_part.texts else logits[:0]

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
    window: dict[str, object] = {
        "since": recipe.since,
        "until": until,
        "first_ts": float(min(stamps)),
        "last_ts": float(max(stamps)),
        "counts": {
            "shadow_window": len(train_idx),
            "holdout": n_hold,
            "old_shadow": len(old_pick),
            "seed": len(seed_part.texts),
        },
    }
    log(f"re-distilling {parent.ref}: {window['counts']}")

    # 3. Distil, warm-started from the parent.
    tokenizer = BatchTokenizer.from_dir(registry.path(parent.ref), parent.max_length)
    model = load_classifier(registry.path(parent.ref))
    if not recipe.warm_start:
        torch.manual_seed(recipe.seed)  # a resumed run must draw the same frozen tensors: not checkpointed
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
    training = train(
        model,
        data.texts,
        tokenizer,
        loss_fn,
        epochs=max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch)),
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        head_lr=recipe.head_lr,
        seed=recipe.seed,
        desc=f"{STUDENT_NAME}: re-distil",
        checkpoint=run.checkpoint,
        checkpoint_every=recipe.checkpoint_every,
    )

    # 4. Export like any student, then gate against the parent on the same data.
    parent_runner = load_runner(registry, parent.ref, threads=recipe.threads)
    parent_figures = _figures(
        parent_runner.predict_logits(hold_texts),
        hold_teacher,
        parent_runner.predict_logits(split.test.texts),
        split.test.labels,
    )
    with registry.stage(STUDENT_NAME) as staging:
        exported = export_student(
            model,
            staging.path,
            tokenizer,
            split.test.texts,
            split.test.labels,
            seed_recipe.int8_max_accuracy_drop,
        )
        candidate_hold = exported.logits_of(staging.path, tokenizer, hold_texts)
        figures = _figures(candidate_hold, hold_teacher, exported.test_logits, split.test.labels)
        verdict = gate(figures, parent_figures, recipe.gate)
        manifest = None
        if verdict.passed:
            teacher_test = teacher_soft_labels(registry, teacher, split.test, log)
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
                "train_seconds": round(time.monotonic() - started, 1),
            }
            manifest = staging.commit(
                student_manifest(
                    registry,
                    exported,
                    parent,
                    Lineage(
                        teacher=teacher.ref,
                        parent=parent.ref,
                        data={"source": "shadow", "window": window, "seed_source": seed_recipe.dataset},
                        recipe={
                            "name": "redistill-from-shadow",
                            **asdict(recipe),
                            "seed_recipe": asdict(seed_recipe),
                        },
                        seed=recipe.seed,
                    ),
                    metrics,
                )
            )
    result = RedistillResult(verdict, manifest, window, round(time.monotonic() - started, 1), training)
    record_run(registry, "classify", parent, manifest, verdict, window, result.seconds, asdict(recipe))
    run.finish()
    log(
        f"registered {manifest.ref}"
        if manifest
        else f"gate refused the candidate: {'; '.join(verdict.reasons)}"
    )
    return result


@dataclass(frozen=True)
class InterruptibleRun:
    """What makes a run resumable after a crash or kill: its window end is pinned on disk before it
    trains (a rerun without `until` would otherwise take "now" and train on a different window), and
    the trainer checkpoints under a name derived from everything that defines the run.

    `<state_dir>/distill/inflight.json` holds the pinned runs; `<state_dir>/distill/checkpoints/`
    their checkpoints. Both are removed when the run ends (registered or refused).
    """

    inflight: Path
    key: str  # parent + recipe without `until`
    until: float
    checkpoint: Path

    @classmethod
    def open(cls, registry: Registry, parent: Manifest, recipe: Any) -> InterruptibleRun:
        """`recipe`: a frozen dataclass with `until` and `checkpoint_every` (either task's recipe)."""
        folder = Path(registry.root.parent) / "distill"
        inflight = folder / "inflight.json"
        spec = {"parent": parent.ref, "recipe": {**asdict(recipe), "until": None, "checkpoint_every": None}}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        now = time.time()
        # A pin older than a day belongs to a run that is not coming back: train on a fresh window, and
        # drop its checkpoint (a few hundred MB for a /generate student).
        pinned = {}
        for k, v in _read_json(inflight).items():
            if now - float(v) < PIN_MAX_AGE_S:
                pinned[k] = v
            else:
                (folder / "checkpoints" / f"{k}-{float(v):.3f}.pt").unlink(missing_ok=True)
        until = recipe.until if recipe.until is not None else pinned.get(key, now)
        if recipe.until is None and key not in pinned:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(inflight, {**pinned, key: until})
        checkpoint = folder / "checkpoints" / f"{key}-{until:.3f}.pt"
        return cls(inflight, key, float(until), checkpoint)

    def finish(self) -> None:
        pinned = _read_json(self.inflight)
        if pinned.pop(self.key, None) is not None:
            write_json(self.inflight, pinned)
        self.checkpoint.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _figures(
    hold_logits: np.ndarray, hold_teacher: np.ndarray, test_logits: np.ndarray, test_labels: list[int]
) -> Figures:
    compared = compare_to_teacher(hold_teacher, hold_logits)
    return Figures(compared["agreement"], compared["mean_kl"], accuracy(test_logits, test_labels))


def _seed_recipe(parent: Manifest) -> ClassifyRecipe:
    """The seed data (and its split) the first student was built from: replay and the accuracy gate use it."""
    known = set(ClassifyRecipe.__dataclass_fields__)
    chain = parent.lineage.recipe
    source: dict[str, Any] = (
        chain if "dataset" in chain else chain.get("seed_recipe", {})
    )  # re-distilled parent
    given: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in source.items() if k in known
    }
    return ClassifyRecipe(**given)


def record_run(
    registry: Registry,
    task: str,
    parent: Manifest,
    registered: Manifest | None,
    verdict: GateResult,
    data: dict[str, object],
    seconds: float,
    recipe: dict[str, Any],
) -> None:
    """Every run of either task, registered or refused, with its reasons and figures:
    `<state_dir>/distill/runs.jsonl` (the audit trail `kdgate distill` and the loop leave)."""
    path = Path(registry.root.parent) / "distill" / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": time.time(),
        "task": task,
        "parent": parent.ref,
        "registered": registered.ref if registered else None,
        "gate": verdict.to_dict(),
        "data": data,
        "seconds": seconds,
        "recipe": recipe,
    }
    with path.open("a") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")
