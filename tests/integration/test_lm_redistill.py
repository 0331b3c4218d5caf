"""/generate re-distillation from the shadow log, on real models: a real gateway serves the student with
the shadow on, `kdgate distill --task generate --from-shadow` (the real CLI) trains generate-student@2
from those records, gates it and registers it with its lineage; on the same window a candidate trained
to loop is refused; a run killed mid-training resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from distill.gate import GateConfig
from distill.generate.redistill import LMRedistillRecipe, redistill_generate
from distill.registry import Registry
from distill.shadowlog.reader import read_shadow
from tests.support import kdgate_in_process, kill_at_first_checkpoint, start_server

STUDENT = "generate-student@1"
TOPICS = ["the weather", "football", "a new phone", "the stock market", "a cooking recipe", "a train strike"]
# Tiny test models are weak: absolute floors off; the comparisons with the parent stay on.
LOOSE = {"min_agreement": 0.0, "max_kl": 50.0, "min_accuracy": 0.0, "max_degenerate_rate": 1.0}
# A step count instead of a time budget: the run is a pure function of its seed, so a resumed run can be
# compared with an uninterrupted one figure for figure.
STEP_BOUND = LMRedistillRecipe(
    budget_minutes=30.0,
    max_steps=12,
    checkpoint_every=3,
    threads=2,
    degeneracy_prompts=4,
    degeneracy_tokens=16,
    gate=GateConfig(**LOOSE),
)


def prompts(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Write one sentence about {TOPICS[i % len(TOPICS)]} ({i})."}
            ],
            "max_tokens": 12,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def shadowed_template(generate_built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generate state after 30 student-served /generate requests, all shadowed by the teacher; built
    once for the module (a real gateway fills the log), copied per test."""
    state = tmp_path_factory.mktemp("shadowed") / "gstate"
    shutil.copytree(generate_built_state, state, copy_function=os.link)
    server = start_server(state, shadow_flush_seconds=0.2)
    try:
        split = {"weights": {STUDENT: 100}}
        admin = server.admin_headers()
        httpx.put(f"{server.url}/admin/traffic/generate", json=split, headers=admin).raise_for_status()
        for body in prompts(30):
            r = httpx.post(f"{server.url}/generate", json=body, timeout=60)
            assert r.status_code == 200 and r.json()["model"] == STUDENT
        deadline = time.monotonic() + 120
        root = str(state / "shadow")
        while read_shadow(root, "generate", columns=["ts"]).num_rows < 30:
            assert time.monotonic() < deadline, "the shadow did not log every completion"
            time.sleep(0.5)
    finally:
        server.stop()
    return state


@pytest.fixture
def shadowed_state(shadowed_template: Path, tmp_path: Path) -> Path:
    """A private copy of the shadowed state (hard links: runs add files, they never rewrite one)."""
    target = tmp_path / "gstate"
    shutil.copytree(shadowed_template, target, copy_function=os.link)
    return target


def test_cli_redistills_the_generate_student_and_the_gate_refuses_a_looping_one(
    shadowed_state: Path, tmp_path: Path
) -> None:
    cmd = ["distill", "--task", "generate", "--from-shadow", "--state-dir", str(shadowed_state)]
    # A step count, not a time budget: a busy machine fits fewer steps in a budget (4 instead of ~12 in
    # one CI run) and the gate then refuses the undertrained candidate.
    cmd += ["--steps", "12", "--gate", json.dumps(LOOSE), "--threads", "2"]
    cmd += ["--result-json", str(tmp_path / "result.json")]
    done = kdgate_in_process(*cmd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["registered"] == "generate-student@2" and summary["gate"]["passed"]
    assert summary["data"]["counts"]["shadow_window"] + summary["data"]["counts"]["holdout"] == 30

    manifest = Registry(shadowed_state).get("generate-student@2")
    assert manifest.task == "generate" and manifest.role == "student"
    assert manifest.lineage.parent == STUDENT and manifest.lineage.teacher == "generate-teacher@1"
    assert manifest.lineage.data["source"] == "shadow"
    assert manifest.lineage.recipe["name"] == "redistill-generate-from-shadow"
    for key in ("heldout_agreement", "heldout_kl", "seed_heldout_agreement", "degenerate_rate", "gate"):
        assert key in manifest.metrics
    shown = kdgate_in_process("models", "show", "generate-student@2", "--state-dir", str(shadowed_state))
    assert shown.returncode == 0 and "redistill-generate-from-shadow" in shown.stdout
    runs = (shadowed_state / "distill" / "runs.jsonl").read_text().splitlines()
    assert json.loads(runs[-1])["task"] == "generate"

    # On the same window: a candidate trained to loop is refused and not registered.
    refused_candidate_is_not_registered(shadowed_state)


def refused_candidate_is_not_registered(shadowed_state: Path) -> None:
    registry = Registry(shadowed_state)
    logged = read_shadow(str(shadowed_state / "shadow"), "generate", columns=["ts"])
    stamps = sorted(t.timestamp() for t in logged["ts"].to_pylist())
    recipe = LMRedistillRecipe(
        since=stamps[len(stamps) // 2],  # the older half is the window before: replayed, not the window
        corrupt_targets=True,
        budget_minutes=30.0,  # bound by steps, not by this machine's speed
        max_steps=25,
        lr=2e-3,
        threads=2,
        degeneracy_prompts=4,
        degeneracy_tokens=16,
        gate=GateConfig(
            **{**LOOSE, "max_agreement_drop": 0.01, "max_kl_rise": 0.1, "max_accuracy_drop": 0.02},
            max_degenerate_rise=0.1,
        ),
    )
    before = [m.ref for m in registry.list() if m.name == "generate-student"]
    root = str(shadowed_state / "shadow")
    result = redistill_generate(registry, recipe, root, parent_ref=STUDENT, log=lambda _: None)
    assert not result.gate.passed and result.manifest is None
    counts = result.data["counts"]
    assert isinstance(counts, dict) and counts["old_shadow"] > 0
    assert counts["shadow_window"] + counts["holdout"] == len(stamps) - len(stamps) // 2
    compared = ("worse than the parent", "dropped below", "more than the parent")
    assert any(c in r for r in result.gate.reasons for c in compared), result.gate
    assert [m.ref for m in registry.list() if m.name == "generate-student"] == before
    entry = json.loads((shadowed_state / "distill" / "runs.jsonl").read_text().splitlines()[-1])
    assert entry["registered"] is None and entry["gate"]["reasons"] == result.gate.reasons


def test_a_killed_generate_run_resumes_on_the_same_window_and_ends_with_the_same_student(
    shadowed_state: Path,
) -> None:
    """kill -9 mid-training, rerun the same step-bound recipe: it resumes from its last checkpoint on
    the window pinned before the kill, and its student equals an uninterrupted run's."""
    reference_dir = shadowed_state.parent / "reference"
    shutil.copytree(shadowed_state, reference_dir, copy_function=os.link)
    script = (
        "from pathlib import Path\n"
        "from distill.generate.redistill import redistill_generate\n"
        "from distill.registry import Registry\n"
        "from tests.integration.test_lm_redistill import STEP_BOUND\n"
        f"redistill_generate(Registry(Path({str(shadowed_state)!r})), STEP_BOUND, "
        f"{str(shadowed_state / 'shadow')!r})\n"
    )
    until = kill_at_first_checkpoint(script, shadowed_state)

    resumed = redistill_generate(
        Registry(shadowed_state), STEP_BOUND, str(shadowed_state / "shadow"), log=lambda _: None
    )
    reference = redistill_generate(
        Registry(reference_dir),
        replace(STEP_BOUND, until=until),
        str(reference_dir / "shadow"),
        log=lambda _: None,
    )
    assert resumed.data["until"] == reference.data["until"] == until
    assert resumed.data["counts"] == reference.data["counts"]
    assert resumed.training["resumed_from_step"] >= STEP_BOUND.checkpoint_every  # it did resume
    assert reference.training["resumed_from_step"] == 0
    assert resumed.gate.candidate == reference.gate.candidate  # identical figures: identical student
    assert json.loads((shadowed_state / "distill" / "inflight.json").read_text()) == {}
    assert not any((shadowed_state / "distill" / "checkpoints").glob("*.pt"))
