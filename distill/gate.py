"""The gate a re-distilled candidate must pass before it is registered (pure decision logic).

Each check compares the candidate with configured minimums and with the current student (its parent)
on the same data: the recent shadow hold-out (agreement with the teacher, KL) and the seed test split
(task accuracy). A candidate that fails any check is not registered; the reasons say which and by how much.

>>> gate(Figures(0.93, 0.04, 0.76), Figures(0.88, 0.06, 0.765), GateConfig()).passed
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Figures:
    recent_agreement: float  # top-1 agreement with the teacher on the held-out recent shadow slice
    recent_kl: float  # mean KL(teacher ‖ model) on that slice, nats
    seed_accuracy: float  # accuracy on the seed test split (never trained on); /generate: seed held-out
    # agreement, the task proxy a generation model has
    degenerate_rate: float | None = None  # /generate: share of greedy completions that loop
    calibrated_ece: float | None = None  # /classify: ECE after temperature scaling, seed test split
    teacher_calibrated_ece: float | None = None  # the teacher's, on the same split


@dataclass(frozen=True)
class GateConfig:
    min_agreement: float = 0.80  # on recent traffic
    max_kl: float = 0.25
    min_accuracy: float = 0.60  # on the seed test split
    max_agreement_drop: float = 0.01  # vs the parent on recent traffic (it should rise, not fall)
    max_kl_rise: float = 0.02
    max_accuracy_drop: float = 0.01  # forgetting budget on the seed task (1 point)
    max_degenerate_rate: float | None = None  # /generate: a candidate that loops more often is refused
    max_degenerate_rise: float | None = None  # /generate: ...and one that loops more than its parent
    max_ece_rise: float | None = 0.02  # /classify: calibrated ECE above the teacher's by more is refused


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate: Figures | None = None
    parent: Figures | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "candidate": asdict(self.candidate) if self.candidate else None,
            "parent": asdict(self.parent) if self.parent else None,
        }


class Refused(Exception):
    """A candidate the gate refused: nothing was registered; `result` says why."""

    def __init__(self, result: GateResult) -> None:
        super().__init__("; ".join(result.reasons))
        self.result = result


def gate(candidate: Figures, parent: Figures | None, config: GateConfig) -> GateResult:
    """Every failed check becomes a reason; the candidate passes only with none."""
    reasons = []
    if candidate.recent_agreement < config.min_agreement:
        reasons.append(
            f"agreement on recent traffic {candidate.recent_agreement:.4f} < {config.min_agreement}"
        )
    if candidate.recent_kl > config.max_kl:
        reasons.append(f"KL on recent traffic {candidate.recent_kl:.4f} > {config.max_kl}")
    if candidate.seed_accuracy < config.min_accuracy:
        reasons.append(f"seed test accuracy {candidate.seed_accuracy:.4f} < {config.min_accuracy}")
    rate, ceiling = candidate.degenerate_rate, config.max_degenerate_rate
    if rate is not None and ceiling is not None and rate > ceiling:
        reasons.append(f"{rate:.2f} of greedy completions loop > {ceiling}")
    ece, teacher_ece = candidate.calibrated_ece, candidate.teacher_calibrated_ece
    ece_rise = config.max_ece_rise
    if ece is not None and teacher_ece is not None and ece_rise is not None and ece > teacher_ece + ece_rise:
        reasons.append(
            f"calibrated ECE {ece:.4f} exceeds the teacher's {teacher_ece:.4f} by more than {ece_rise}"
        )
    if parent is not None:
        if candidate.recent_agreement < parent.recent_agreement - config.max_agreement_drop:
            reasons.append(
                f"agreement on recent traffic {candidate.recent_agreement:.4f} is worse than the "
                f"parent's {parent.recent_agreement:.4f} by more than {config.max_agreement_drop}"
            )
        if candidate.recent_kl > parent.recent_kl + config.max_kl_rise:
            reasons.append(
                f"KL on recent traffic {candidate.recent_kl:.4f} is worse than the parent's "
                f"{parent.recent_kl:.4f} by more than {config.max_kl_rise}"
            )
        rise, was = config.max_degenerate_rise, parent.degenerate_rate
        if rate is not None and was is not None and rise is not None and rate > was + rise:
            reasons.append(
                f"{rate:.2f} of greedy completions loop, more than the parent's {was:.2f} by more than {rise}"
            )
        if candidate.seed_accuracy < parent.seed_accuracy - config.max_accuracy_drop:
            reasons.append(
                f"seed test accuracy {candidate.seed_accuracy:.4f} dropped below the parent's "
                f"{parent.seed_accuracy:.4f} by more than {config.max_accuracy_drop}"
            )
    return GateResult(not reasons, reasons, candidate, parent)
