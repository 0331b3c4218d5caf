"""The default models a fresh gateway lacks, built while it already serves: `kdgate models build` in a
child below serving (the re-distillation's nice value and scheduling class), teachers first. After each
step the child registers, the gateway loads what is new, so a task answers as soon as its teacher exists
and a student joins once it is built and gated. The child's output goes to <state-dir>/build/build.log;
each step's state to <state-dir>/build/status.json (`GET /admin/build`, `kdgate models build-status`).

One build per state dir: the gateways on it (the workers of `serve --workers N`) contend for a lease, an
`flock` as the controller's and the shadow's. The holder runs the child; the others say `building` as it
does and load each model its steps register; if the holder's build is cut short (killed with -9, it
takes its child with it), the first to take the lease after it builds what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

from distill.build_status import BuildStatus, StepState, read_status, status_path
from distill.default_models import DefaultModel, default_models, missing, planned
from durablefs import write_json
from gateway.continual.child import below_serving, stop_child
from gateway.settings import Settings
from gateway.state import GatewayState
from rollout.lease import FileLease, process_identity

log = logging.getLogger("kdgate.build")
POLL_SECONDS = 1.0
LEASE_DIR = "build-lease"  # one build per state dir: the workers of `serve --workers N` share it
HOLDER_FILE = "build.lease"


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


def build_lease(state_dir: Path) -> FileLease:
    """The state dir's build lease (an `flock`, dropped by the kernel when its holder dies, kill -9 too)."""
    return FileLease(state_dir / LEASE_DIR, process_identity("build"), holder_file=HOLDER_FILE)


def start_background_build(state: GatewayState, steps: list[DefaultModel]) -> asyncio.Task[None]:
    """Marks the tasks the build brings (their requests get 503 + Retry-After until then, and `/readyz`
    says `building`) and starts the build on the running loop: this gateway's own if it takes the build
    lease, else it follows the holder's."""
    state.building = frozenset(s.task for s in steps)
    return asyncio.create_task(_build(state, steps))


def builds_after_holder(status: BuildStatus, left: list[DefaultModel]) -> bool:
    """Whether a gateway that takes the lease after another's build builds what is left: only if that
    build was cut short (its holder killed, and its child with it). One that ran to its end with a
    failed step is not run again by each worker in turn; the next start retries it, as for one gateway.

    >>> builds_after_holder(BuildStatus(started_at=1.0), [DefaultModel("classify", "student")])
    True
    >>> builds_after_holder(BuildStatus(started_at=1.0, ended_at=2.0), [DefaultModel("classify", "student")])
    False
    """
    return bool(left) and status.ended_at is None


async def _build(state: GatewayState, steps: list[DefaultModel]) -> None:
    """Builds what is missing, loading each model as its step is done; or, while another gateway on
    the state dir holds the lease, loads what its steps register. Cancelled (the gateway stopping), it
    stops its child; the next start builds what is still missing. The lease is tried on the loop: it
    never waits (LOCK_NB), so a cancellation never leaves it taken by a thread."""
    state_dir = state.settings.state_dir
    lease = build_lease(state_dir)
    try:
        if lease.acquire():
            _show_planned(state_dir, steps)
            await _run_child(state)
        else:
            log.info("another gateway on this state dir builds the default models; following its steps")
            loaded: set[str | None] = set()
            while not lease.acquire():
                loaded = await _load_built(state, loaded)
                await asyncio.sleep(POLL_SECONDS)
            left = await asyncio.to_thread(missing_defaults, state)
            if builds_after_holder(read_status(state_dir), left):
                _show_planned(state_dir, left)
                await _run_child(state)
        await asyncio.to_thread(state.load_models)  # whatever the last step registered
    finally:
        lease.release()
        state.building = frozenset()


def _show_planned(state_dir: Path, steps: list[DefaultModel]) -> None:
    path = status_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, planned(steps).model_dump(mode="json"))


async def _run_child(state: GatewayState) -> None:
    settings = state.settings
    log_path = settings.state_dir / "build" / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the missing default models in the background; progress in %s", log_path)
    with log_path.open("ab") as output:
        proc = await asyncio.create_subprocess_exec(
            *build_command(settings),
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=below_serving(settings.redistill_nice, settings.redistill_idle_class),
        )
    loaded: set[str | None] = set()
    try:
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), POLL_SECONDS)
            loaded = await _load_built(state, loaded)
    except asyncio.CancelledError:
        await stop_child(proc)
        raise
    if proc.returncode:
        log.error("building the default models failed (exit %s); see %s", proc.returncode, log_path)


async def _load_built(state: GatewayState, loaded: set[str | None]) -> set[str | None]:
    """Loads the models the build's steps registered since the last look; the refs loaded so far."""
    built = {s.ref for s in read_status(state.settings.state_dir).steps if s.state is StepState.DONE}
    if built - loaded and state.ready:  # before the first load, that load takes them all
        await asyncio.to_thread(state.load_models)
        return loaded | built
    return loaded
