"""Recipe overrides as JSON (`--recipe`, `--gate`, the loop's `redistill_recipes`): what a user types
either becomes the recipe they meant or is refused naming the field, before any training starts."""

from __future__ import annotations

import pytest
import typer

from distill.classify.build import ClassifyRecipe
from distill.gate import GateConfig
from distill.generate.build import GenerateRecipe
from gateway.cli.recipes import overridden
from gateway.cli.sweep import _grid


def test_fields_are_replaced_and_a_json_list_becomes_the_tuple_field() -> None:
    recipe = overridden(GenerateRecipe(), '{"max_steps": 6, "student_layers": [0, 29]}', "--recipe")
    assert recipe.max_steps == 6 and recipe.student_layers == (0, 29)
    assert overridden(GateConfig(), None, "--gate") == GateConfig()


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ('{"max_stepz": 6}', "unknown field 'max_stepz'"),
        ("[1, 2]", "not a JSON object"),
        ("{not json", "GenerateRecipe fields"),
    ],
)
def test_a_bad_override_is_refused_naming_it(given: str, named: str) -> None:
    with pytest.raises(typer.BadParameter, match=named):
        overridden(GenerateRecipe(), given, "--recipe")


def test_kd_losses_are_a_recipe_field_and_a_sweep_axis() -> None:
    recipe = overridden(ClassifyRecipe(), '{"losses": ["logits", "hidden"], "hidden_weight": 2}', "--recipe")
    assert recipe.validated().losses == ("logits", "hidden") and recipe.hidden_weight == 2
    points = _grid("2", "0.9", "1", None, "logits,hidden")
    assert [p.id for p in points] == ["T2-a0.9-L1", "T2-a0.9-L1+hidden"]
    assert [p.id for p in _grid("2", "0.9", "1", None)] == ["T2-a0.9-L1"]  # no --losses: logits only
    with pytest.raises(typer.Exit) as refused:
        _grid("2", "0.9", "1", None, "logits,feelings")
    assert refused.value.exit_code == 2
