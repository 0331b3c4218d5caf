"""`--pick RULE`: the point of a finished sweep that the rule chooses, trained on the recipe's full
training data (not the sweep's slice) by the usual student build, exported INT8 as the sweep measured
it, through the gate, into the registry, with the sweep's id, the point and the rule in its lineage.

The outcome, registered or refused, is kept in the sweep's folder as `pick.json`.

    manifest = pick(Registry(state_dir), sweeps_root(state_dir) / sweep_id, parse_rule("agreement max"))
"""

from __future__ import annotations

import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from distill.classify.build import build_student
from distill.classify.recipe import ClassifyRecipe
from distill.gate import GateConfig, Refused
from distill.registry import Manifest, Registry
from distill.workbench.grid import LOGITS_ONLY, Point
from distill.workbench.points import POINTS_FILE, read_points, read_spec
from distill.workbench.rule import Rule, choose
from distill.workbench.sweep import Log
from distill.workbench.trial import point_recipe
from durablefs import write_json

PICK_FILE = "pick.json"


class NoPointMatches(ValueError):
    """No recorded point meets the rule's clauses."""


def pick(
    registry: Registry, folder: Path, rule: Rule, log: Log, gate_config: GateConfig | None = None
) -> Manifest:
    """Builds, gates and registers the point `rule` chooses; `Refused` (recorded) if the gate says no."""
    spec, points = read_spec(folder), read_points(folder / POINTS_FILE)
    chosen = choose(points, rule)
    if chosen is None:
        raise NoPointMatches(f"no point of sweep {spec['id']} ({len(points)} recorded) meets {rule}")
    losses = tuple(chosen.get("losses") or LOGITS_ONLY)  # absent from points recorded before the axis
    prune = float(chosen.get("prune") or 0.0)  # absent from points recorded before the axis
    point = Point(chosen["temperature"], chosen["alpha"], chosen["layers"], chosen["width"], losses, prune)
    # Served as the sweep measured it, INT8: the rule chose the point by its INT8 export's latency and
    # size. The build's own INT8 guard (fall back to FP32 past a 0.005 accuracy drop) would register a
    # student twice as slow as the rule allowed; the gate still judges the INT8 student's figures.
    recipe = replace(
        point_recipe(base_recipe(spec["recipe"]), point, spec["labelled"]), int8_max_accuracy_drop=1.0
    )
    lineage = {"id": spec["id"], "point": point.id, "rule": str(rule), "figures": chosen}
    log(f"picked {point.id} by '{rule}': training it on the full data")
    outcome: dict[str, Any] = {"at": time.time(), "rule": str(rule), "point": point.id}
    try:
        manifest = build_student(registry, recipe, spec["teacher"], log, gate_config or GateConfig(), lineage)
    except Refused as refused:
        write_json(folder / PICK_FILE, outcome | {"registered": None, "gate": refused.result.to_dict()})
        raise
    write_json(folder / PICK_FILE, outcome | {"registered": manifest.ref, "gate": manifest.metrics["gate"]})
    return manifest


def base_recipe(recorded: dict[str, Any]) -> ClassifyRecipe:
    """The sweep's recipe back from `sweep.json` (JSON has no tuples: the split comes back as one)."""
    known = {f.name for f in fields(ClassifyRecipe)}
    given: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in known
    }
    return ClassifyRecipe(**given)
