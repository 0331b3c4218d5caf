"""The continual loop inside `kdgate serve`: watch the shadow log, re-distil, gate, start a canary.

One run at a time, in a child process (`kdgate distill --from-shadow`) with few threads and a raised
nice value, so serving keeps its core and its p99; the gateway only counts records, decides (pure
`should_redistill`), and on a registered candidate loads it and starts its rollout. The window and the
shadow segments a running training still needs are protected from retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distill.shadowlog.reader import read_shadow
from distill.trigger import TriggerConfig, should_redistill
from gateway.http.rollouts import RolloutStart, build_config
from gateway.state import GatewayState

log = logging.getLogger("kdgate.redistill")
TASK = "classify"  # the task `kdgate distill watch` re-distils


def loop_store_path(state_dir: Path, task: str) -> Path:
    """Where the loop remembers the end of its last window (classify keeps its original file name)."""
    return state_dir / "distill" / ("loop.json" if task == "classify" else f"loop-{task}.json")


class LoopStore:
    """`<state_dir>/distill/loop.json`: the end of the last window trained on (the next run starts there),
    and the run under way, if any. A run the gateway stopped (restart, kill) is started again with the
    same parent and window, so `kdgate distill` finds its checkpoint and resumes instead of starting over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        loaded = json.loads(self.path.read_text()) if self.path.exists() else {}
        return loaded if isinstance(loaded, dict) else {}

    def last_until(self) -> float | None:
        last = self._read().get("last_until")
        return float(last) if last is not None else None

    def interrupted(self, parent: str) -> float | None:
        """The window end of `parent`'s run that never finished; None if there is none (or it was for
        another parent: the serving student changed, so that run is moot)."""
        running = self._read().get("running")
        if not running or running.get("parent") != parent:
            return None
        return float(running["until"])

    @contextlib.contextmanager
    def run(self, until: float, parent: str) -> Iterator[None]:
        """Around one run: recorded as under way while it trains; on success the next window starts at
        `until`; on a failure (an Exception) the record is dropped, so a failing window is not retried
        forever. A stop (cancellation, Ctrl-C, kill) leaves it under way: the next start resumes it."""
        self._write({**self._read(), "running": {"until": until, "parent": parent}})
        try:
            yield
        except Exception:
            self._write({k: v for k, v in self._read().items() if k != "running"})
            raise
        self._write({"last_until": until})

    def _write(self, payload: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(self.path)


def serving_student(state: GatewayState, task: str = TASK) -> str | None:
    """The student with the largest weight now (the parent of the next one), else the latest student."""
    weights = state.traffic.get(task)
    manifests = {r: state.pool.manifest_of(r) for r in weights}
    students = [
        r for r, m in manifests.items() if m is not None and m.role == "student" and m.kind == "model"
    ]
    if students:
        return max(sorted(students), key=lambda r: weights[r])
    latest = state.registry.latest(f"{task}-student")
    return latest.ref if latest else None


def offline_disagreement(metrics: dict[str, Any]) -> float | None:
    """The student's own disagreement with the teacher when it was registered (classify records it;
    a generate student records its held-out token agreement)."""
    if "disagreement" in metrics:
        return float(metrics["disagreement"])
    if "heldout_agreement" in metrics:
        return 1.0 - float(metrics["heldout_agreement"])
    return None


def below_serving(nice: int, idle_class: bool) -> Callable[[], None]:
    """The child's `preexec_fn`: raise its nice value and, with `idle_class`, put it in SCHED_IDLE, where
    it only gets a core that serving leaves idle (at nice 10 CFS still gives it ~1/10 of a busy core).
    On Linux the child also gets SIGTERM when its parent dies, however it dies: a gateway killed with
    -9 leaves no training behind to race the run its next start takes up (and resumes). Linux sends it
    when the *thread* that started the child ends: start it from a long-lived one (the event loop's)."""
    prctl = _libc_prctl()  # resolved here: the child only makes the call (no dlopen after fork)

    def apply() -> None:
        os.nice(nice)
        if idle_class and hasattr(os, "SCHED_IDLE"):  # Linux; elsewhere the nice value is all there is
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return apply


PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def redistill_command(
    state_dir: Path,
    since: float | None,
    until: float,
    parent: str,
    result_json: Path,
    threads: int = 1,
    gate: dict[str, float] | None = None,
    shadow_root: str | None = None,
    task: str = TASK,
    budget_minutes: float | None = None,
) -> list[str]:
    """The `kdgate distill --from-shadow` child process of one run (the loop and `distill watch`)."""
    kdgate = str(Path(sys.executable).with_name("kdgate"))
    cmd = [kdgate, "distill", "--task", task, "--from-shadow", "--state-dir", str(state_dir)]
    cmd += ["--until", repr(until), "--threads", str(threads), "--parent", parent]
    cmd += ["--result-json", str(result_json)]
    if since is not None:
        cmd += ["--since", repr(since)]
    if gate:
        cmd += ["--gate", json.dumps(gate)]
    if shadow_root:
        cmd += ["--shadow-root", shadow_root]
    if budget_minutes is not None:
        cmd += ["--budget", repr(budget_minutes)]
    return cmd


async def run_redistill(
    state: GatewayState, since: float | None, until: float, parent: str, task: str = TASK
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
            task,
            settings.redistill_generate_budget_minutes if task == "generate" else None,
        )
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=below_serving(settings.redistill_nice, settings.redistill_idle_class),
        )
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:  # the gateway is stopping: a run must not outlive it (it resumes)
            with contextlib.suppress(ProcessLookupError):  # it may have just ended by itself
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
            raise
        if not out.exists():
            raise RuntimeError(f"re-distillation exited {proc.returncode}: {err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


async def redistill_loop(state: GatewayState) -> None:
    """Checks each task of `redistill_tasks` in turn; runs are one at a time across tasks (both cores
    are shared with serving)."""
    settings = state.settings
    root = settings.shadow_root or str(settings.state_dir / "shadow")
    minimums = {
        "classify": settings.redistill_min_new_records,
        "generate": settings.redistill_min_new_completions,
    }
    while not state.ready:
        await asyncio.sleep(0.2)
    while True:
        await asyncio.sleep(settings.redistill_check_seconds)
        for task in settings.redistill_tasks:
            store = LoopStore(loop_store_path(settings.state_dir, task))
            trigger_config = TriggerConfig(minimums[task], settings.redistill_drift)
            try:
                await _check_once(state, task, store, root, trigger_config)
            except Exception:  # the loop survives a failed run; the next check tries again
                log.exception("re-distillation check failed for %s", task)
            finally:
                state.protect_shadow_after = None


async def _check_once(
    state: GatewayState, task: str, store: LoopStore, root: str, trigger_config: TriggerConfig
) -> None:
    current = state.controller.store.load(task)
    if current is not None and current[0].phase.active:
        return  # one candidate at a time: wait for the running canary to finish
    parent = serving_student(state, task)
    if parent is None:
        return
    since = store.last_until()
    until = store.interrupted(parent)
    if until is not None:
        log.info("re-distilling %s: resuming the run stopped before it ended", parent)
    else:
        new_records = (await asyncio.to_thread(read_shadow, root, task, since=since, columns=["ts"])).num_rows
        totals = state.window.totals(parent)
        live = totals.disagreed / totals.compared if totals.compared else None
        loaded = state.pool.manifest_of(parent)
        offline = offline_disagreement(loaded.metrics) if loaded is not None else None
        trigger = should_redistill(new_records, live, int(totals.compared), offline, trigger_config)
        if not trigger.fire:
            return
        until = time.time()
        log.info("re-distilling %s: %s", parent, trigger.reason)
    state.protect_shadow_after = since if since is not None else 0.0  # retention keeps what training reads
    with store.run(until, parent):
        result = await run_redistill(state, since, until, parent, task)
    if resumed := result.get("training", {}).get("resumed_from_step"):
        log.info("the run took up its checkpoint at step %d", resumed)
    candidate = result.get("registered")
    if candidate is None:
        log.warning("gate refused the candidate: %s", "; ".join(result["gate"]["reasons"]))
        return
    await asyncio.to_thread(state.pool.load_all)
    if state.settings.redistill_auto_rollout:
        body = RolloutStart(task=task, candidate=candidate, **state.settings.redistill_rollout)
        manifest = state.pool.manifest_of(candidate)
        assert manifest is not None, f"{candidate} was registered but did not load"
        config = build_config(body, manifest)
        weights = state.traffic.get(task)
        baseline = max(sorted(weights), key=lambda r: weights[r])
        await asyncio.to_thread(state.controller.start, task, baseline, candidate, config, "judge")
        log.info("canary of %s started against %s", candidate, baseline)
