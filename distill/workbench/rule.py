"""The `--pick` rule language (pure): which point of a sweep to train on the full data.

    rule   := METRIC ("max" | "min") ["where" clause ("and" clause)*]
    clause := METRIC ("<=" | "<" | ">=" | ">" | "==" | "!=") NUMBER

A rule says what to optimise and under which limits, the way the question is asked ("the best
agreement at p50 ≤ 1 ms"), rather than a set of flags that each cover one case. Parsing is separate
from choosing, so a typo is refused before any training starts, with the token that is wrong.

>>> rule = parse_rule("agreement max where p50_ms <= 1.0 and size_mb < 40")
>>> rule.metric, rule.goal, rule.clauses[0]
('agreement', 'max', Clause(metric='p50_ms', op='<=', value=1.0))
>>> rows = [{"id": "a", "agreement": 0.91, "p50_ms": 1.2, "size_mb": 30},
...         {"id": "b", "agreement": 0.89, "p50_ms": 0.8, "size_mb": 30},
...         {"id": "c", "agreement": 0.86, "p50_ms": 0.5, "size_mb": 20}]
>>> choose(rows, rule)["id"]
'b'
>>> choose(rows, parse_rule("p50_ms min"))["id"]
'c'
>>> parse_rule("agreement maximum")
Traceback (most recent call last):
...
distill.workbench.rule.RuleError: expected 'max' or 'min' after 'agreement', got 'maximum'
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

# What a rule may name: a point's recorded figures and its parameters (see sweep.py's records).
METRICS = (
    "agreement",
    "accuracy",
    "kl",
    "ece",
    "calibrated_ece",
    "p50_ms",
    "p99_ms",
    "size_mb",
    "train_seconds",
    "temperature",
    "alpha",
    "layers",
    "width",
)
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
}
# A run of comparison characters is one token, so `=>` is refused as itself rather than as `=`, `>`.
_TOKEN = re.compile(r"[<>=!]+|[^\s<>=!]+")

Row = TypeVar("Row", bound=Mapping[str, Any])


class RuleError(ValueError):
    """A rule that does not parse; the message names the offending token."""


@dataclass(frozen=True)
class Clause:
    metric: str
    op: str
    value: float

    def holds(self, row: Mapping[str, Any]) -> bool:
        """False when the row lacks the figure: an unmeasured limit is not met."""
        value = row.get(self.metric)
        if not isinstance(value, int | float) or math.isnan(value):
            return False
        return OPS[self.op](float(value), self.value)


@dataclass(frozen=True)
class Rule:
    metric: str
    goal: Literal["max", "min"]
    clauses: tuple[Clause, ...] = ()

    def __str__(self) -> str:
        where = " and ".join(f"{c.metric} {c.op} {c.value:g}" for c in self.clauses)
        return f"{self.metric} {self.goal}" + (f" where {where}" if where else "")


def parse_rule(text: str) -> Rule:
    """The rule in `text`; `RuleError` naming the first token that does not fit the grammar."""
    tokens = _tokens(text)
    reader = _Reader(tokens)
    metric = reader.metric("a metric to optimise")
    goal = reader.next(f"'max' or 'min' after {metric!r}")
    if goal not in ("max", "min"):
        raise RuleError(f"expected 'max' or 'min' after {metric!r}, got {goal!r}")
    clauses: list[Clause] = []
    if reader.peek() is not None:
        word = reader.next("'where'")
        if word != "where":
            raise RuleError(f"expected 'where' after {goal!r}, got {word!r}")
        while True:
            clauses.append(reader.clause())
            if reader.peek() is None:
                break
            joiner = reader.next("'and'")
            if joiner != "and":
                raise RuleError(f"expected 'and' between clauses, got {joiner!r}")
    return Rule(metric, "max" if goal == "max" else "min", tuple(clauses))


def choose(rows: Sequence[Row], rule: Rule) -> Row | None:
    """The row that meets every clause with the best `rule.metric`; None when none qualifies. Ties go to
    the earliest row, so the choice is stable for a given points file."""
    eligible = [
        row for row in rows if all(c.holds(row) for c in rule.clauses) and _measured(row, rule.metric)
    ]
    if not eligible:
        return None
    sign = 1.0 if rule.goal == "max" else -1.0
    best = eligible[0]
    for row in eligible[1:]:
        if sign * float(row[rule.metric]) > sign * float(best[rule.metric]):
            best = row
    return best


def _measured(row: Mapping[str, Any], metric: str) -> bool:
    value = row.get(metric)
    return isinstance(value, int | float) and not math.isnan(value)


def _tokens(text: str) -> list[str]:
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise RuleError("empty rule (e.g. 'agreement max where p50_ms <= 1.0')")
    return tokens


class _Reader:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def next(self, expected: str) -> str:
        token = self.peek()
        if token is None:
            raise RuleError(f"expected {expected}, got the end of the rule")
        self.at += 1
        return token

    def metric(self, expected: str) -> str:
        name = self.next(expected)
        if name not in METRICS:
            raise RuleError(f"unknown metric {name!r} (one of: {', '.join(METRICS)})")
        return name

    def clause(self) -> Clause:
        metric = self.metric("a metric after 'where'/'and'")
        op = self.next(f"a comparison after {metric!r}")
        if op not in OPS:
            raise RuleError(f"expected a comparison ({' '.join(OPS)}) after {metric!r}, got {op!r}")
        number = self.next(f"a number after {op!r}")
        try:
            value = float(number)
        except ValueError:
            raise RuleError(f"expected a number after {op!r}, got {number!r}") from None
        if math.isnan(value):
            raise RuleError(f"expected a number after {op!r}, got {number!r}")
        return Clause(metric, op, value)
