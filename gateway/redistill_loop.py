"""The continual loop inside `kdgate serve`: watch the shadow log, re-distil, gate, start a canary.

One run at a time, in a child process (`kdgate distill --from-shadow`) with few threads and a raised
nice value, so serving keeps its core and its p99; the gateway only counts records, decides (pure
`should_redistill`), and on a registered candidate loads it and starts its rollout. The window and the
shadow segments a running training still needs are protected from retention.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.classify_build import STUDENT_NAME
from distill.shadowread import read_shadow
from distill.trigger import TriggerConfig, should_redistill
from gateway.rollout_api import RolloutStart, build_config
from gateway.state import GatewayState

log = logging.getLogger("kdgate.redistill")
TASK = "classify"


class LoopStore:
    """`<state_dir>/distill/loop.json`: the end of the last window trained on (the next run starts there)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last_until(self) -> float | None:
        return json.loads(self.path.read_text())["last_until"] if self.path.exists() else None

    def save(self, until: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_until": until}))
        tmp.replace(self.path)


def serving_student(state: GatewayState) -> str | None:
    """The student with the largest weight now (the parent of the next one), else the latest student."""
    weights = state.traffic.get(TASK)
    students = [
        r
        for r in weights
        if r in state.pool.models
        and state.pool.models[r].manifest.role == "student"
        and state.pool.models[r].manifest.kind == "model"
    ]
    if students:
        return max(sorted(students), key=lambda r: weights[r])
    latest = state.registry.latest(STUDENT_NAME)
    return latest.ref if latest else None


def below_serving(nice: int, idle_class: bool) -> Callable[[], None]:
    """The child's `preexec_fn`: raise its nice value and, with `idle_class`, put it in SCHED_IDLE, where
    it only gets a core that serving leaves idle (nice 10 alone still took ~10% from a busy core)."""

    def apply() -> None:
        os.nice(nice)
        if idle_class and hasattr(os, "SCHED_IDLE"):  # Linux; elsewhere the nice value is all there is
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    return apply


def redistill_command(
    state_dir: Path,
    since: float | None,
    until: float,
    parent: str,
    result_json: Path,
    threads: int = 1,
    gate: dict[str, float] | None = None,
    shadow_root: str | None = None,
) -> list[str]:
    """The `kdgate distill --from-shadow` child process of one run (the loop and `distill watch`)."""
    kdgate = str(Path(sys.executable).with_name("kdgate"))
    cmd = [kdgate, "distill", "--task", TASK, "--from-shadow", "--state-dir", str(state_dir)]
    cmd += ["--until", repr(until), "--threads", str(threads), "--parent", parent]
    cmd += ["--result-json", str(result_json)]
    if since is not None:
        cmd += ["--since", repr(since)]
    if gate:
        cmd += ["--gate", json.dumps(gate)]
    if shadow_root:
        cmd += ["--shadow-root", shadow_root]
    return cmd


async def run_redistill(
    state: GatewayState, since: float | None, until: float, parent: str
) -> dict[str, Any]:
    settings = state.settings
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = redistill_command(
            settings.state_dir,
            since,
            until,
            parent,
            out,
            settings.redistill_threads,
            settings.redistill_gate,
            settings.shadow_root,
        )
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=below_serving(settings.redistill_nice, settings.redistill_idle_class),
        )
        _, err = await proc.communicate()
        if not out.exists():
            raise RuntimeError(f"re-distillation exited {proc.returncode}: {err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


async def redistill_loop(state: GatewayState) -> None:
    settings = state.settings
    store = LoopStore(settings.state_dir / "distill" / "loop.json")
    root = settings.shadow_root or str(settings.state_dir / "shadow")
    trigger_config = TriggerConfig(settings.redistill_min_new_records, settings.redistill_drift)
    while not state.ready:
        await asyncio.sleep(0.2)
    while True:
        await asyncio.sleep(settings.redistill_check_seconds)
        try:
            await _check_once(state, store, root, trigger_config)
        except Exception:  # the loop survives a failed run; the next check tries again
            log.exception("re-distillation check failed")
        finally:
            state.protect_shadow_after = None


async def _check_once(
    state: GatewayState, store: LoopStore, root: str, trigger_config: TriggerConfig
) -> None:
    current = state.controller.store.load(TASK)
    if current is not None and current[0].phase.active:
        return  # one candidate at a time: wait for the running canary to finish
    since = store.last_until()
    new_records = (await asyncio.to_thread(read_shadow, root, TASK, since=since, columns=["ts"])).num_rows
    parent = serving_student(state)
    if parent is None:
        return
    totals = state.window.totals(parent)
    live = totals.disagreed / totals.compared if totals.compared else None
    offline = (
        state.pool.models[parent].manifest.metrics.get("disagreement")
        if parent in state.pool.models
        else None
    )
    trigger = should_redistill(new_records, live, int(totals.compared), offline, trigger_config)
    if not trigger.fire:
        return
    until = time.time()
    log.info("re-distilling %s: %s", parent, trigger.reason)
    state.protect_shadow_after = since if since is not None else 0.0  # retention keeps what training reads
    result = await run_redistill(state, since, until, parent)
    store.save(until)
    candidate = result.get("registered")
    if candidate is None:
        log.warning("gate refused the candidate: %s", "; ".join(result["gate"]["reasons"]))
        return
    await asyncio.to_thread(state.pool.load_all)
    if state.settings.redistill_auto_rollout:
        body = RolloutStart(task=TASK, candidate=candidate, **state.settings.redistill_rollout)
        config = build_config(body, state.pool.models[candidate].manifest)
        baseline = max(sorted(state.traffic.get(TASK)), key=lambda r: state.traffic.get(TASK)[r])
        await asyncio.to_thread(state.controller.start, TASK, baseline, candidate, config, "judge")
        log.info("canary of %s started against %s", candidate, baseline)
