"""The grid of a sweep: every combination of temperature, α, student depth, width, KD losses and pruning
share, each
with a stable id derived from its parameters alone (pure).

The id is what makes a sweep resumable and a pick traceable: `points.jsonl` is keyed by it, so a
re-run of the same grid finds what is already done, and a student's lineage names the point it came
from. It reads as the parameters themselves, so a person can tell points apart without a lookup.

>>> points = grid(temperatures=(1, 4), alphas=(0.9,), layers=(2,))
>>> [p.id for p in points]
['T1-a0.9-L2', 'T4-a0.9-L2']
>>> Point(temperature=2.0, alpha=0.5, layers=3, width=128).id
'T2-a0.5-L3-w128'
>>> Point(2.0, 0.9, 2, losses=("logits", "hidden", "attention")).id
'T2-a0.9-L2+hidden+attention'
>>> Point(2.0, 0.9, 3, prune=0.3).id
'T2-a0.9-L3-p0.3'
>>> len(grid())   # the issue's default: 5 temperatures × 3 depths × 2 alphas
30
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from distill.classify.recipe import LOSS_TERMS

DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_LAYERS = (1, 2, 3)
DEFAULT_ALPHAS = (0.5, 0.9)
MAX_LAYERS = 6  # the MiniLM teacher's depth: a cut student has at most as many layers
MIN_WIDTH, HEAD_SIZE = 32, 32  # a built student's hidden size is a multiple of its head size
LOGITS_ONLY = ("logits",)


class GridError(ValueError):
    """A grid value out of range; the message names the option it came from."""


@dataclass(frozen=True)
class Point:
    """One student recipe of the sweep: KD temperature, soft-term weight, depth, (for a student built
    rather than cut from the teacher) hidden size, and the KD loss terms."""

    temperature: float
    alpha: float
    layers: int
    width: int | None = None  # None: the teacher's own width (its first `layers` layers)
    losses: tuple[str, ...] = LOGITS_ONLY  # "logits" and any of "hidden", "attention", in LOSS_TERMS order
    prune: float = 0.0  # share of heads and feed-forward channels cut before KD (`distill.workbench.prune`)

    @property
    def id(self) -> str:
        """Stable and readable: `T<temperature>-a<alpha>-L<layers>[-w<width>][-p<prune>][+<loss>...]`,
        numbers in their shortest form (2.0 and 2 are one point); logits-only KD and no pruning add
        nothing, so the ids of sweeps from before those axes still name the same points."""
        width = "" if self.width is None else f"-w{self.width}"
        pruned = f"-p{_num(self.prune)}" if self.prune else ""
        extra = "".join(f"+{term}" for term in self.losses if term != "logits")
        return f"T{_num(self.temperature)}-a{_num(self.alpha)}-L{self.layers}{width}{pruned}{extra}"

    def params(self) -> dict[str, float | int | list[str] | None]:
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "layers": self.layers,
            "width": self.width,
            "losses": list(self.losses),
            "prune": self.prune,
        }


def grid(
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    layers: Sequence[int] = DEFAULT_LAYERS,
    widths: Sequence[int | None] = (None,),
    losses: Sequence[tuple[str, ...]] = (LOGITS_ONLY,),
    prunes: Sequence[float] = (0.0,),
) -> list[Point]:
    """Every combination, in a fixed order (temperature slowest, then depth, α, width, losses, prune);
    duplicates (2 and 2.0) once. Raises `GridError` naming the option of a value out of range."""
    _check(temperatures, "--temperatures", lambda t: 0 < t <= 100, "in (0, 100]")
    _check(alphas, "--alphas", lambda a: 0 <= a <= 1, "in [0, 1]")
    _check(layers, "--layers", lambda n: 1 <= n <= MAX_LAYERS, f"in 1..{MAX_LAYERS}")
    _check(
        [w for w in widths if w is not None],
        "--widths",
        lambda w: w >= MIN_WIDTH and w % HEAD_SIZE == 0,
        f"a multiple of {HEAD_SIZE}, at least {MIN_WIDTH}",
    )
    _check(prunes, "--prune", lambda s: 0 <= s < 1, "in [0, 1)")
    for terms in losses:
        if "logits" not in terms or not set(terms) <= set(LOSS_TERMS):
            raise GridError(f"--losses: {'+'.join(terms)} is not logits plus any of hidden, attention")
    seen: dict[str, Point] = {}
    for t, n, a, w, k, s in itertools.product(temperatures, layers, alphas, widths, losses, prunes):
        ordered = tuple(term for term in LOSS_TERMS if term in k)
        point = Point(float(t), float(a), int(n), None if w is None else int(w), ordered, float(s))
        seen.setdefault(point.id, point)
    return list(seen.values())


def parse_list(text: str, option: str, kind: type[float] | type[int]) -> list[float] | list[int]:
    """A comma-separated option value (`"1,2,4"`) as numbers; `GridError` naming the option otherwise.

    >>> parse_list("1, 2,4", "--temperatures", float)
    [1.0, 2.0, 4.0]
    >>> parse_list("2,x", "--layers", int)
    Traceback (most recent call last):
    ...
    distill.workbench.grid.GridError: --layers: 'x' is not a number (e.g. --layers 1,2,3)
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise GridError(f"{option}: no values (e.g. {option} 1,2,3)")
    values = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            raise GridError(f"{option}: {item!r} is not a number (e.g. {option} 1,2,3)") from None
    return values


def parse_widths(text: str) -> list[int | None]:
    """`--widths`: hidden sizes of students built rather than cut, `cut` for the teacher's own width.

    >>> parse_widths("cut,128")
    [None, 128]
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    rest = [item for item in items if item != "cut"]
    built: list[int | None] = [int(w) for w in parse_list(",".join(rest), "--widths", int)] if rest else []
    return ([None] if "cut" in items else []) + built


def parse_losses(text: str) -> list[tuple[str, ...]]:
    """`--losses`: the loss sets to sweep, each the logits term plus what an item names; `+` joins
    terms, so `logits,hidden,attention` is the ablation logits-only / + hidden / + attention.

    >>> parse_losses("logits, hidden,hidden+attention")
    [('logits',), ('logits', 'hidden'), ('logits', 'hidden', 'attention')]
    """
    sets = []
    for item in [item.strip() for item in text.split(",") if item.strip()]:
        terms = {term.strip() for term in item.split("+")} | {"logits"}
        unknown = sorted(terms - set(LOSS_TERMS))
        if unknown:
            raise GridError(f"--losses: {unknown[0]!r} is not a loss (logits, hidden, attention; '+' joins)")
        sets.append(tuple(term for term in LOSS_TERMS if term in terms))
    if not sets:
        raise GridError("--losses: no values (e.g. --losses logits,hidden,attention)")
    return sets


def _check(values: Sequence[float], option: str, ok: Callable[[float], bool], expected: str) -> None:
    if not values and option != "--widths":
        raise GridError(f"{option}: no values")
    for value in values:
        if not ok(value):
            raise GridError(f"{option}: {value} is out of range (expected {expected})")


def _num(value: float) -> str:
    """2.0 → "2", 0.5 → "0.5": the shortest exact form, so equal values give equal ids."""
    return f"{value:g}"
