"""The training child of one re-distillation run: its command line, and running it below serving.

One run at a time, in a child process (`kdgate distill --from-shadow`) with few threads and a raised
nice value, so serving keeps its core and its p99. The child writes its result (gate figures, the
registered ref) as JSON; a run stopped before it ended resumes from its checkpoint next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
    threads: int = 1,
    gate: dict[str, float | None] | None = None,
    shadow_root: str | None = None,
    task: str = "classify",
    budget_minutes: float | None = None,
    recipe: dict[str, Any] | None = None,
    registry_url: str | None = None,
) -> list[str]:
    """The `kdgate distill --from-shadow` command line of one run."""
    kdgate = str(Path(sys.executable).with_name("kdgate"))
    cmd = [kdgate, "distill", "--task", task, "--from-shadow", "--state-dir", str(state_dir)]
    cmd += ["--until", repr(until), "--threads", str(threads), "--parent", parent]
    if since is not None:
        cmd += ["--since", repr(since)]
    if gate:
        cmd += ["--gate", json.dumps(gate)]
    if shadow_root:
        cmd += ["--shadow-root", shadow_root]
    if registry_url:
        cmd += ["--registry-url", registry_url]
    if budget_minutes is not None:
        cmd += ["--budget", repr(budget_minutes)]
    if recipe:
        cmd += ["--recipe", json.dumps(recipe)]
    return cmd


async def stop_child(proc: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the child has not ended within `grace_s`."""
    with contextlib.suppress(ProcessLookupError):  # it may have just ended by itself
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()


async def run_child(cmd: list[str], preexec: Callable[[], None]) -> dict[str, Any]:
    """Runs the child (`cmd` without its `--result-json`) and returns its result. A cancelled run
    (the gateway stopping) terminates the child: a run must not outlive its host; it resumes later."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            "--result-json",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec,
        )
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            await stop_child(proc)
            raise
        if not out.exists():
            raise RuntimeError(f"re-distillation exited {proc.returncode}: {err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result
