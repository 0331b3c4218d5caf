"""Re-distil the /generate student from the shadow log: live completions → new student → gate → registry.

The generate shadow logs, for every shadowed completion, the prompt as the model read it, the served
token ids, and the teacher's top-k log-probabilities at each of those positions (teacher forcing).
That is on-policy distillation data (GKD, Agarwal et al. 2024): the student learns the teacher's
distribution on the sequences the student itself produces, where its mistakes are. Teacher-served
completions come with the top-k the teacher recorded while generating.

The run skeleton is `distill.runs`; this module supplies what /generate does differently: the window's
completions (newest `holdout_fraction` held out), replay of the cached seed targets the first build
trained on and of the window before this one, KD warm-started from the parent for `budget_minutes`, and
the gate figures (recent hold-out agreement and KL, seed held-out agreement as the task proxy, the share
of greedy completions that loop).

Example::

    result = redistill_generate(Registry(state_dir), LMRedistillRecipe(since=t0), f"{state_dir}/shadow")
    result.manifest.ref if result.gate.passed else result.gate.reasons
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.gate import Figures, GateConfig
from distill.generate.build import TOKENIZER_FILES, load_targets
from distill.generate.kd import (
    bf16_is_native,
    degenerate_rate,
    evaluate,
    greedy_tokens_per_s,
    kd_options,
    load_student_lm,
    train_kd,
)
from distill.generate.recipe import GenerateRecipe
from distill.generate.targets import TargetSet, corrupted, subset
from distill.registry import Manifest, Role
from distill.runs import Passed, RunContext, redistill_run
from distill.shadowlog.reader import read_shadow

# Agreement and KL of a 4-layer student with its 30-layer teacher sit far from /classify's (0.37 and
# 3.9 after the default build): absolute floors that catch a broken candidate, comparisons with the
# parent that catch a worse one. "seed_accuracy" is the agreement on the seed held-out prompts.
GENERATE_GATE = GateConfig(
    min_agreement=0.25,
    max_kl=6.0,
    min_accuracy=0.25,
    max_agreement_drop=0.01,
    max_kl_rise=0.10,
    max_accuracy_drop=0.02,
    max_degenerate_rate=0.10,
    # max_degenerate_rise stays opt-in: the 0.10 ceiling above already bounds what users see, and a rise
    # measured from a parent that never loops would refuse short re-distillations that stay under it.
)


@dataclass(frozen=True)
class LMRedistillRecipe:
    """Hyper-parameters of one /generate re-distillation run (all recorded in the new manifest)."""

    since: float | None = None  # shadow window start, epoch seconds (None: the whole log)
    until: float | None = None  # window end (None: now)
    holdout_fraction: float = 0.2  # newest share of the window's completions, kept out of training
    seed_replay: float = 0.5  # seed sequences replayed per window sequence (against forgetting)
    old_shadow_replay: float = 0.25  # completions from the window before `since`, per window sequence
    budget_minutes: float = 3.0  # wall time of the KD loop
    max_steps: int | None = None  # a step count instead of the budget: the run is then deterministic
    batch_size: int = 16
    lr: float = 5e-4  # a quarter of the first build's: a warm start only needs to move a little
    temperature: float = 1.0
    alpha: float = 0.5  # hard term: the teacher's argmax at each position (not the served token)
    threads: int = 1
    seed: int = 0
    checkpoint_every: int = 50  # KD steps between checkpoints (a killed run resumes from the last)
    degeneracy_prompts: int = 16  # recent held-out prompts the gate generates greedily from
    degeneracy_tokens: int = 48
    corrupt_targets: bool = False  # rehearsal: targets that teach a loop; the gate must refuse it
    train_bf16: bool = field(default_factory=bf16_is_native)  # this machine's, not the seed build's
    gate: GateConfig = field(default_factory=lambda: GENERATE_GATE)


@dataclass(frozen=True)
class ShadowWindow:
    targets: TargetSet  # one sequence per usable record, oldest first
    stamps: np.ndarray  # (n,) epoch seconds

    def __len__(self) -> int:
        return len(self.targets)


def window_sequences(
    shadow_root: str,
    task: str,
    teacher_ref: str,
    tokenizer: Any,
    since: float | None,
    until: float | None,
) -> ShadowWindow | None:
    """The task's completions in the window that carry the teacher's top-k (redacted prompts cannot be
    trained on)."""
    table = read_shadow(
        shadow_root,
        task,
        since=since,
        until=until,
        columns=[
            "ts",
            "input_text",
            "teacher_model",
            "served_ids",
            "teacher_topk_ids",
            "teacher_topk_logprobs",
            "teacher_tail_mass",
        ],
    )
    prompts, completions, ids, logprobs, tails, stamps = [], [], [], [], [], []
    k = None
    for row in table.to_pylist():
        served, topk = row["served_ids"], row["teacher_topk_ids"]
        if not row["input_text"] or not served or topk is None or row["teacher_model"] != teacher_ref:
            continue
        k = k or len(topk[0])
        if len(topk) != len(served) or len(topk[0]) != k:
            continue  # a record from another shadow_topk setting, or torn: skip rather than pad
        prompts.append(tokenizer.encode(row["input_text"], add_special_tokens=False))
        completions.append(served)
        ids.append(np.asarray(topk, dtype=np.int32))
        logprobs.append(np.asarray(row["teacher_topk_logprobs"], dtype=np.float32))
        tails.append(np.asarray(row["teacher_tail_mass"], dtype=np.float32))
        stamps.append(row["ts"].timestamp())
    if not stamps:
        return None
    order = np.argsort(stamps, kind="stable")
    targets = TargetSet.from_sequences(
        [prompts[i] for i in order],
        [completions[i] for i in order],
        np.concatenate([ids[i] for i in order]),
        np.concatenate([logprobs[i] for i in order]),
        np.concatenate([tails[i] for i in order]),
    )
    return ShadowWindow(targets, np.asarray(stamps)[order])


@dataclass(frozen=True)
class Recent:
    """The window as read, with the teacher's tokenizer that read it (replay and export use it too)."""

    window: ShadowWindow
    tokenizer: Any
    teacher_dir: Path

    def __len__(self) -> int:
        return len(self.window)

    @property
    def stamps(self) -> np.ndarray:
        return self.window.stamps


@dataclass(frozen=True)
class Targets:
    train: TargetSet  # the window's older part, seed replay and the window before
    hold: TargetSet  # the window's newest completions: the gate's recent traffic
    seed_hold: TargetSet  # the seed held-out targets: the gate's task proxy
    probe: list[list[int]]  # recent held-out prompts the gate generates greedily from
    recent: Recent
    pad_id: int
    eos: int


@dataclass(frozen=True)
class Candidate:
    served: Any  # the student as the gateway loads it
    folder: Path
    probe: list[list[int]]


class GenerateRun:
    """/generate's part of a re-distillation run (`distill.runs.RunTask`)."""

    kind = "generate"
    recipe_name = "redistill-generate-from-shadow"
    seed_recipe_type = GenerateRecipe
    min_records = 10
    records = "/generate shadow records"
    no_parent = "no generate student with a teacher to re-distil from; build one first"

    def window(self, run: RunContext[LMRedistillRecipe], since: float | None, until: float) -> Recent | None:
        from transformers import AutoTokenizer

        teacher_dir = run.registry.path(run.teacher.ref)
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
        window = window_sequences(run.shadow_root, run.task, run.teacher.ref, tokenizer, since, until)
        return Recent(window, tokenizer, teacher_dir) if window is not None else None

    def targets(self, run: RunContext[LMRedistillRecipe], recent: Recent) -> tuple[Targets, dict[str, int]]:
        from transformers import AutoModelForCausalLM

        recipe, tokenizer, n = run.recipe, recent.tokenizer, len(recent)
        n_hold = max(2, int(n * recipe.holdout_fraction))
        train_part = subset(recent.window.targets, list(range(n - n_hold)))
        hold = subset(recent.window.targets, list(range(n - n_hold, n)))

        # Replay: the seed targets the first build trained on (cached; regenerated only if missing).
        teacher = AutoModelForCausalLM.from_pretrained(
            recent.teacher_dir, dtype=torch.float32, local_files_only=True
        )
        teacher.eval()
        seed_train = load_targets(run.registry, run.teacher.ref, teacher, tokenizer, run.seed_recipe, "train")
        seed_hold = load_targets(
            run.registry, run.teacher.ref, teacher, tokenizer, run.seed_recipe, "heldout"
        )
        del teacher  # 0.5 GB that training does not need
        rng = np.random.default_rng(recipe.seed)
        n_replay = min(len(seed_train), math.ceil(recipe.seed_replay * len(train_part)))
        replay = subset(seed_train, sorted(rng.permutation(len(seed_train))[:n_replay].tolist()))
        # ...and the traffic before this window: the previous window of the same span (an older log is
        # bounded by retention, not by what one run should read: top-k per token is large).
        old = None
        if recipe.since is not None:
            start = recipe.since - (run.until - recipe.since)
            older = window_sequences(
                run.shadow_root, run.task, run.teacher.ref, tokenizer, start, recipe.since
            )
            if older is not None and older.targets.topk_ids.shape[1] == train_part.topk_ids.shape[1]:
                n_old = min(len(older.targets), math.ceil(recipe.old_shadow_replay * len(train_part)))
                old = subset(older.targets, sorted(rng.permutation(len(older.targets))[:n_old].tolist()))
        train_set = TargetSet.concat([train_part, replay] + ([old] if old is not None else []))
        if recipe.corrupt_targets:
            train_set = corrupted(train_set)
        counts = {
            "shadow_window": len(train_part),
            "holdout": len(hold),
            "seed": len(replay),
            "old_shadow": len(old) if old is not None else 0,
            "window_tokens": len(train_part.topk_ids),
        }
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        probe = [hold.sequence(i)[: hold.prompt_lens[i]].tolist() for i in range(len(hold))]
        probe = probe[: recipe.degeneracy_prompts]
        targets = Targets(train_set, hold, seed_hold, probe, recent, int(pad), int(tokenizer.eos_token_id))
        return targets, counts

    def train(
        self, run: RunContext[LMRedistillRecipe], targets: Targets, checkpoint: Path
    ) -> tuple[Any, dict[str, float]]:
        """KD warm-started from the parent (bf16 on disk → fp32 to train)."""
        from transformers import AutoModelForCausalLM

        recipe = run.recipe
        student = AutoModelForCausalLM.from_pretrained(
            run.registry.path(run.parent.ref), dtype=torch.float32, local_files_only=True
        )
        summary = train_kd(
            student,
            targets.train,
            **kd_options(recipe),
            pad_id=targets.pad_id,
            freeze_embeddings=True,
            checkpoint=checkpoint,
            checkpoint_every=recipe.checkpoint_every,
            desc=f"{run.parent.name}: re-distil",
        )
        return student, summary

    def parent_figures(self, run: RunContext[LMRedistillRecipe], targets: Targets) -> Figures:
        return _figures(load_student_lm(run.registry.path(run.parent.ref)), targets, run.recipe)

    def candidate(
        self, run: RunContext[LMRedistillRecipe], student: Any, targets: Targets, folder: Path
    ) -> tuple[Candidate, Figures]:
        student.to(getattr(torch, run.seed_recipe.export_dtype)).save_pretrained(
            folder, safe_serialization=True
        )
        for name in TOKENIZER_FILES:
            shutil.copyfile(targets.recent.teacher_dir / name, folder / name)
        served = load_student_lm(folder)  # gate exactly what the gateway will load
        return Candidate(served, folder, targets.probe), _figures(served, targets, run.recipe)

    def lineage_data(self, run: RunContext[LMRedistillRecipe]) -> dict[str, object]:
        return {}

    def manifest(self, run: RunContext[LMRedistillRecipe], candidate: Candidate, passed: Passed) -> Manifest:
        figures, verdict = passed.figures, passed.verdict
        seed = run.seed_recipe
        speed = greedy_tokens_per_s(
            candidate.served, candidate.probe[0], seed.speed_tokens, seed.speed_repeats
        )
        metrics = {
            # The rollout judge derives its live thresholds from these: take them on recent traffic.
            "heldout_agreement": round(figures.recent_agreement, 4),
            "heldout_kl": round(figures.recent_kl, 4),
            "seed_heldout_agreement": round(figures.seed_accuracy, 4),
            "degenerate_rate": figures.degenerate_rate,
            "tokens_per_s": round(speed, 1),
            "export_dtype": seed.export_dtype,
            "gate": verdict.to_dict(),
            **{f"train_{k}": v for k, v in passed.training.items()},
            "build_seconds": run.elapsed(),
        }
        return Manifest(
            name=run.parent.name,
            version=run.registry.next_version(run.parent.name),
            task=run.parent.task,
            task_kind=run.parent.task_kind,
            role=Role.STUDENT,
            format="torch",
            files=sorted(p.name for p in candidate.folder.iterdir() if p.is_file()),
            tokenizer="tokenizer.json",
            max_length=run.parent.max_length,
            lineage=passed.lineage,
            metrics=metrics,
        )


GENERATE_RUN = GenerateRun()


# redistill_generate(registry, recipe, shadow_root, parent_ref=None, log=STDERR) -> RunResult
redistill_generate = partial(redistill_run, GENERATE_RUN)


def _figures(model: Any, targets: Targets, recipe: LMRedistillRecipe) -> Figures:
    recent, seed = (
        evaluate(model, targets.hold, targets.pad_id),
        evaluate(model, targets.seed_hold, targets.pad_id),
    )
    loops = degenerate_rate(model, targets.probe, recipe.degeneracy_tokens, targets.eos)
    return Figures(recent["agreement"], recent["kl"], seed["agreement"], loops)
