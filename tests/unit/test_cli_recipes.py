"""Recipe overrides as JSON (`--recipe`, `--gate`, the loop's `redistill_recipes`): what a user types
either becomes the recipe they meant or is refused naming the field, before any training starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from distill.classify.recipe import ClassifyRecipe
from distill.gate import GateConfig
from distill.generate.recipe import GenerateRecipe
from gateway.cli.recipes import overridden
from gateway.cli.sweep import _grid
from tests.support import kdgate_in_process


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


def test_serve_refuses_bad_settings_one_line_each_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The build child would only fail later on a recipe field it does not know: refused at start.
    monkeypatch.setenv("KDGATE_BUILD_RECIPE", '{"teacher_epochs": 2, "epochz": 2}')
    monkeypatch.setenv("KDGATE_BUILD_GENERATE_RECIPE", '{"max_steps": 4}')
    monkeypatch.setenv("KDGATE_MAX_BATCH_SIZE", "0")
    done = kdgate_in_process("serve", "--state-dir", str(tmp_path / "state"), "--port", "0", "--no-build")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stdout + done.stderr
    assert lines[0].startswith("setting build_recipe: ") and "unknown field 'epochz'" in lines[0]
    assert "ClassifyRecipe fields: alpha," in lines[0]
    assert lines[1].startswith("setting max_batch_size: ")
    assert not (tmp_path / "state").exists()  # nothing written before the refusal
