"""The default models a fresh gateway lacks, built while it already serves: `kdgate models build` in a
child below serving (the re-distillation's nice value and scheduling class), teachers first. After each
step the child registers, the gateway loads what is new, so a task answers as soon as its teacher exists
and a student joins once it is built and gated. The child's output goes to <state-dir>/build/build.log;
each step's state to <state-dir>/build/status.json (`GET /admin/build`, `kdgate models build-status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

from distill.build_status import StepState, read_status, status_path
from distill.default_models import DefaultModel, default_models, missing, planned
from durablefs import write_json
from gateway.continual.child import below_serving, stop_child
from gateway.settings import Settings
from gateway.state import GatewayState

log = logging.getLogger("kdgate.build")
POLL_SECONDS = 1.0


def missing_defaults(state: GatewayState) -> list[DefaultModel]:
    """The default models the registry lacks. The build child (`kdgate models build`) builds them
    with the settings' recipes; the gateway itself never imports the training code."""
    return missing(state.registry, default_models(state.settings.build_generate))


def build_command(settings: Settings) -> list[str]:
    kdgate = str(Path(sys.executable).with_name("kdgate"))
    cmd = [kdgate, "models", "build", "--state-dir", str(settings.state_dir), "--dataset", settings.dataset]
    cmd.append("--generate" if settings.build_generate else "--no-generate")
    if settings.build_recipe:
        cmd += ["--recipe", json.dumps(settings.build_recipe)]
    if settings.build_generate_recipe:
        cmd += ["--generate-recipe", json.dumps(settings.build_generate_recipe)]
    return cmd


def start_background_build(state: GatewayState, steps: list[DefaultModel]) -> asyncio.Task[None]:
    """Marks the tasks the build brings (their requests get 503 + Retry-After until then, and `/readyz`
    says `building`), shows its steps as pending, and starts the build on the running loop."""
    state.building = frozenset(s.task for s in steps)
    path = status_path(state.settings.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, planned(steps).model_dump(mode="json"))
    return asyncio.create_task(_build(state))


async def _build(state: GatewayState) -> None:
    """Runs the build child to its end, loading each model as its step is done. Cancelled (the gateway
    stopping), it stops the child; the next start builds what is still missing."""
    settings = state.settings
    log_path = settings.state_dir / "build" / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the missing default models in the background; progress in %s", log_path)
    try:
        with log_path.open("ab") as output:
            proc = await asyncio.create_subprocess_exec(
                *build_command(settings),
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=below_serving(settings.redistill_nice, settings.redistill_idle_class),
            )
        await _follow(state, proc)
    finally:
        state.building = frozenset()
    await asyncio.to_thread(state.load_models)  # whatever the last step registered
    if proc.returncode:
        log.error("building the default models failed (exit %s); see %s", proc.returncode, log_path)


async def _follow(state: GatewayState, proc: asyncio.subprocess.Process) -> None:
    loaded: set[str | None] = set()
    try:
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), POLL_SECONDS)
            steps = read_status(state.settings.state_dir).steps
            built = {s.ref for s in steps if s.state is StepState.DONE}
            if built - loaded and state.ready:  # before the first load, that load takes them all
                await asyncio.to_thread(state.load_models)
                loaded |= built
    except asyncio.CancelledError:
        await stop_child(proc)
        raise
