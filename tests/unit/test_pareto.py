"""The sweep's pure decisions: the Pareto frontier against a brute-force definition, the --pick rule
language (parsing, errors, choice) and the grid's ids."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distill.workbench.grid import GridError, Point, grid, parse_list, parse_losses, parse_widths
from distill.workbench.pareto import frontier, frontier_ids
from distill.workbench.rule import Clause, RuleError, choose, parse_rule

# Few distinct values, so ties and equal rows are common: the cases a frontier gets wrong.
figure = st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0])
rows_strategy = st.lists(st.tuples(figure, figure, figure, st.booleans()), min_size=0, max_size=12).map(
    lambda values: [
        {"id": f"p{i}", "agreement": a if measured else math.nan, "p50_ms": p, "size_mb": s}
        for i, (a, p, s, measured) in enumerate(values)
    ]
)


def brute_force_frontier(rows: list[dict[str, float | str]]) -> set[str]:
    """The definition, written out independently: a measured row is on the frontier unless some other
    row is at least as good on all three and strictly better on one."""

    def at_least_as_good(a: dict, b: dict) -> bool:
        return (
            a["agreement"] >= b["agreement"] and a["p50_ms"] <= b["p50_ms"] and a["size_mb"] <= b["size_mb"]
        )

    def strictly_better_somewhere(a: dict, b: dict) -> bool:
        return a["agreement"] > b["agreement"] or a["p50_ms"] < b["p50_ms"] or a["size_mb"] < b["size_mb"]

    measured = [r for r in rows if not math.isnan(r["agreement"])]  # type: ignore[arg-type]
    return {
        str(r["id"])
        for r in measured
        if not any(at_least_as_good(o, r) and strictly_better_somewhere(o, r) for o in measured)
    }


@given(rows_strategy)
def test_frontier_is_the_set_of_non_dominated_points(rows: list[dict]) -> None:
    assert frontier_ids(rows, "agreement") == brute_force_frontier(rows)


@given(rows_strategy)
def test_frontier_keeps_the_given_order_and_every_measured_best(rows: list[dict]) -> None:
    kept = frontier(rows, "agreement")
    assert [r["id"] for r in kept] == [r["id"] for r in rows if r in kept]
    measured = [r for r in rows if not math.isnan(r["agreement"])]
    if measured:  # the best agreement, with the least cost among those, is never dominated
        best = max(r["agreement"] for r in measured)
        assert any(r["agreement"] == best for r in kept)


def test_a_row_missing_a_figure_is_never_on_the_frontier() -> None:
    rows = [
        {"id": "a", "agreement": 0.9, "p50_ms": 1.0},
        {"id": "b", "agreement": 0.5, "p50_ms": 2.0, "size_mb": 1},
    ]
    assert frontier_ids(rows, "agreement") == {"b"}


def test_a_rule_parses_into_its_metric_goal_and_clauses() -> None:
    rule = parse_rule("  accuracy min where layers>=2 and p99_ms != 3e-1 ")
    assert (rule.metric, rule.goal) == ("accuracy", "min")
    assert rule.clauses == (Clause("layers", ">=", 2.0), Clause("p99_ms", "!=", 0.3))
    assert parse_rule(str(rule)) == rule  # printed as it parses


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "empty rule"),
        ("speed max", "'speed'"),
        ("agreement best", "'best'"),
        ("agreement max when p50_ms < 1", "'when'"),
        ("agreement max where p50_ms", "end of the rule"),
        ("agreement max where p50_ms => 1", "'=>'"),
        ("agreement max where p50_ms <= fast", "'fast'"),
        ("agreement max where p50_ms <= nan", "'nan'"),
        ("agreement max where p50_ms <= 1 or size_mb < 3", "'or'"),
        ("agreement max where latency <= 1", "'latency'"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_token(text: str, named: str) -> None:
    with pytest.raises(RuleError, match=named):
        parse_rule(text)


def test_choose_meets_every_clause_and_breaks_ties_by_order() -> None:
    rows = [
        {"id": "a", "agreement": 0.9, "p50_ms": 2.0},
        {"id": "b", "agreement": 0.8, "p50_ms": 0.5},
        {"id": "c", "agreement": 0.8, "p50_ms": 0.4},
        {"id": "d", "agreement": 0.99},  # no latency measured: fails any latency clause
    ]
    assert choose(rows, parse_rule("agreement max"))["id"] == "d"  # type: ignore[index]
    assert choose(rows, parse_rule("agreement max where p50_ms <= 1"))["id"] == "b"  # type: ignore[index]
    assert choose(rows, parse_rule("agreement max where p50_ms < 0.1")) is None


def test_grid_ids_are_stable_readable_and_unique() -> None:
    points = grid()
    assert len(points) == 30 and len({p.id for p in points}) == 30
    assert points[0].id == "T1-a0.5-L1"
    assert Point(2, 0.9, 2).id == Point(2.0, 0.9, 2).id == "T2-a0.9-L2"  # 2 and 2.0 are one point
    assert grid(temperatures=(2, 2.0), alphas=(0.9,), layers=(2,)) == [Point(2.0, 0.9, 2)]
    assert [p.id for p in grid((1,), (1,), (1,), (None, 64))] == ["T1-a1-L1", "T1-a1-L1-w64"]
    # The loss axis: logits-only adds nothing to an id (sweeps from before it keep theirs); a set's
    # terms read in one order, however they were given.
    sets = [("logits",), ("logits", "hidden"), ("attention", "logits", "hidden")]
    assert [p.id for p in grid((1,), (1,), (1,), (64,), sets)] == [
        "T1-a1-L1-w64",
        "T1-a1-L1-w64+hidden",
        "T1-a1-L1-w64+hidden+attention",
    ]
    assert Point(1, 1, 1, losses=("logits", "hidden")).params()["losses"] == ["logits", "hidden"]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"temperatures": (0,)}, "--temperatures"),
        ({"alphas": (1.5,)}, "--alphas"),
        ({"layers": (7,)}, "--layers"),
        ({"widths": (100,)}, "--widths"),
        ({"layers": ()}, "--layers"),
        ({"losses": [("hidden",)]}, "--losses"),
    ],
)
def test_a_grid_value_out_of_range_names_its_option(kwargs: dict, option: str) -> None:
    with pytest.raises(GridError, match=option):
        grid(**kwargs)


def test_option_lists_parse_or_name_the_option() -> None:
    assert parse_list("1,2", "--layers", int) == [1, 2]
    assert parse_widths("cut, 64") == [None, 64]
    with pytest.raises(GridError, match="--alphas"):
        parse_list(" , ", "--alphas", float)
    with pytest.raises(GridError, match="--widths"):
        parse_widths("cut,wide")
    assert parse_losses("logits,hidden,attention") == [
        ("logits",),
        ("logits", "hidden"),
        ("logits", "attention"),
    ]
    assert parse_losses("hidden+attention") == [("logits", "hidden", "attention")]
    with pytest.raises(GridError, match="--losses: 'hiden'"):
        parse_losses("logits,hiden")
