"""`kdgate distill sweep` end to end on the tiny teacher and student: a 4-point sweep killed with -9
after its first point and resumed (no point trained twice), its report checked against a frontier
recomputed here from points.jsonl, and a pick that registers a gated student with the sweep in its
lineage. The killed run is the real CLI in a child process (kill -9 needs one); the others run the same
CLI in this process, which has torch imported already."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from distill.registry import Registry
from tests.support import KDGATE, CliResult, kdgate_in_process

pytestmark = pytest.mark.slow

# 4 points on 160 texts each (half of the 320 a pick trains on), tested on 200: seconds per point.
GRID = ["--temperatures", "1,4", "--layers", "1,2", "--alphas", "0.9", "--fraction", "0.5"]
RECIPE = json.dumps({"student_examples": 320, "eval_examples": 200, "threads": 2})
# The tiny student agrees with its tiny teacher on ~75% of texts: the gate's thresholds are for real ones.
LENIENT_GATE = json.dumps({"min_agreement": 0.3, "max_kl": 5.0, "min_accuracy": 0.2, "max_ece_rise": None})


def sweep_command(state_dir: Path, *extra: str) -> list[str]:
    return [KDGATE, "distill", "sweep", *GRID, "--recipe", RECIPE, "--state-dir", str(state_dir), *extra]


def run(command: list[str]) -> CliResult:
    return kdgate_in_process(*command[1:])


def the_sweep(state_dir: Path) -> Path:
    (folder,) = (state_dir / "distill" / "sweeps").iterdir()
    return folder


def independent_frontier(points: list[dict[str, Any]]) -> set[str]:
    """Pareto-optimal ids by the definition, written here rather than imported: agreement max, p50 and
    size min; a point is out if another is no worse on all three and better on one."""
    keys = [(p["id"], p["agreement"], p["p50_ms"], p["size_mb"]) for p in points]
    out = set()
    for pid, a, t, s in keys:
        for other, a2, t2, s2 in keys:
            if other != pid and a2 >= a and t2 <= t and s2 <= s and (a2 > a or t2 < t or s2 < s):
                out.add(pid)
    return {k[0] for k in keys} - out


def test_a_sweep_resumes_after_kill_reports_its_frontier_and_picks_a_gated_student(
    state_dir: Path, tmp_path: Path
) -> None:
    # 1. Start the sweep; kill -9 it as soon as its first point is recorded.
    output = tmp_path / "killed.log"
    with output.open("w") as sink:
        proc = subprocess.Popen(sweep_command(state_dir), stdout=sink, stderr=subprocess.STDOUT)
    sweeps = state_dir / "distill" / "sweeps"
    deadline = time.monotonic() + 300
    while not any(p.read_text().strip() for p in sweeps.glob("*/points.jsonl")):
        assert proc.poll() is None, f"the sweep ended before its first point: {output.read_text()}"
        assert time.monotonic() < deadline, "no point was recorded"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    folder = the_sweep(state_dir)
    before = [line for line in (folder / "points.jsonl").read_text().splitlines() if line.endswith("}")]
    assert 1 <= len(before) < 4, "the kill did not land mid-sweep"

    # 2. The same command resumes: the recorded points are kept as they were, the rest trained once.
    resumed = run(sweep_command(state_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(before)} already done" in resumed.stdout + resumed.stderr
    lines = (folder / "points.jsonl").read_text().splitlines()
    points = [json.loads(line) for line in lines]
    assert len(points) == 4 and len({p["id"] for p in points}) == 4  # no point trained twice
    assert lines[: len(before)] == before
    assert {p["id"] for p in points} == {"T1-a0.9-L1", "T1-a0.9-L2", "T4-a0.9-L1", "T4-a0.9-L2"}
    for p in points:
        assert 0 <= p["agreement"] <= 1 and p["p50_ms"] > 0 and p["p99_ms_raw"] >= p["p50_ms_raw"]
        assert p["size_mb"] > 0 and p["train_examples"] == 160 and p["ece"] >= 0
    one_layer = {p["size_mb"] for p in points if p["layers"] == 1}
    two_layers = {p["size_mb"] for p in points if p["layers"] == 2}
    assert max(one_layer) < min(two_layers)  # the INT8 export really grows with depth

    # 3. The report: both files, and the marked frontier is the one recomputed from points.jsonl.
    report = (folder / "report.md").read_text()
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    marked = {m.group(1) for m in re.finditer(r"^\| ★ \| (\S+) \|", report, re.MULTILINE)}
    rows = {m.group(1) for m in re.finditer(r"^\| ★? ?\| (T\S+) \|", report, re.MULTILINE)}
    assert rows == {p["id"] for p in points}
    assert marked == independent_frontier(points) and marked
    shown = kdgate_in_process("distill", "sweep", "show", folder.name, "--state-dir", str(state_dir))
    assert shown.returncode == 0 and all(p["id"] in shown.stdout for p in points)
    missing = kdgate_in_process("distill", "sweep", "show", "nope", "--state-dir", str(state_dir))
    assert missing.returncode == 2 and len(missing.stdout.strip().splitlines()) == 1

    # 4. Pick: the same sweep (nothing retrained), the rule's point trained on the full 320 texts and
    # gated: refused under a gate no tiny student meets (exit 3, nothing registered), then registered
    # under one for tiny models, with the sweep in its lineage.
    rule = "agreement max where layers <= 1"
    expected = max((p for p in points if p["layers"] <= 1), key=lambda p: p["agreement"])["id"]
    refused = run(sweep_command(state_dir, "--pick", rule, "--gate", json.dumps({"min_agreement": 0.999})))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "gate refused" in refused.stdout and "agreement" in refused.stdout
    assert Registry(state_dir).latest("classify-student").ref == "classify-student@1"  # type: ignore[union-attr]
    assert json.loads((folder / "pick.json").read_text())["registered"] is None

    picked = run(sweep_command(state_dir, "--pick", rule, "--gate", LENIENT_GATE))
    assert picked.returncode == 0, picked.stdout + picked.stderr
    assert "4 already done" in picked.stdout + picked.stderr
    assert len((folder / "points.jsonl").read_text().splitlines()) == 4
    student = Registry(state_dir).get("classify-student@2")
    assert student.lineage.sweep is not None
    assert student.lineage.sweep["id"] == folder.name and student.lineage.sweep["point"] == expected
    assert student.lineage.recipe["student_layers"] == 1 and student.lineage.data["sizes"]["train"] == 320
    assert student.metrics["gate"]["passed"] is True
    assert student.metrics["quantized"] == "int8"  # served as the sweep measured it
    assert json.loads((folder / "pick.json").read_text())["registered"] == "classify-student@2"
