"""`kdgate distill watch`: the continual loop as a process of its own beside a running gateway (or
behind its balancer), talking to it over the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Annotated

import typer

from gateway.cli.common import (
    DEFAULT_STATE,
    DEFAULT_URL,
    GatewayUrl,
    RegistryUrl,
    StateDir,
    Token,
    admin_token,
    console,
)
from gateway.cli.recipes import task_kind


def watch(
    url: GatewayUrl = DEFAULT_URL,
    state_dir: StateDir = DEFAULT_STATE,
    registry_url: RegistryUrl = None,
    shadow_url: Annotated[
        str | None,
        typer.Option(envvar="KDGATE_SHADOW_URL", help="Shadow log URL (default <state-dir>/shadow)."),
    ] = None,
    token: Token = None,
    task: Annotated[
        str, typer.Option(help="Task whose student to re-distil: classify, generate or a named task.")
    ] = "classify",
    min_new_records: Annotated[
        int | None,
        typer.Option(help="New shadow records that trigger a run (default 2000 classify, 300 generate)."),
    ] = None,
    budget: Annotated[float | None, typer.Option(help="Generate: minutes of KD per run (default 3).")] = None,
    drift: Annotated[
        float, typer.Option(help="...or live disagreement this far above the student's offline figure.")
    ] = 0.05,
    interval: Annotated[float, typer.Option(help="Seconds between checks.")] = 30.0,
    once: Annotated[bool, typer.Option(help="Check once (and train if triggered), then exit.")] = False,
    threads: Annotated[int, typer.Option(help="Training threads (the run is also niced).")] = 1,
    rollout: Annotated[
        bool, typer.Option(help="Start a canary of every candidate that passes the gate.")
    ] = True,
    rollout_config: Annotated[
        str | None, typer.Option(help="Canary overrides as JSON, e.g. '{\"steps\": [5, 50, 100]}'.")
    ] = None,
    gate: Annotated[
        str | None, typer.Option(help="Gate overrides as JSON, e.g. '{\"min_agreement\": 0.85}'.")
    ] = None,
    recipe_json: Annotated[
        str | None, typer.Option("--recipe", help="Run recipe overrides as JSON, e.g. '{\"epochs\": 2}'.")
    ] = None,
) -> None:
    """Watch the shadow log; re-distil, gate, register, and start a canary on the running gateway.

    Shares the gateway's state dir; use it instead of the gateway's built-in loop (redistill_enabled),
    not beside it: on the local store the two contend for one lease, and only its holder checks. Runs
    are one at a time, niced, and resumable if interrupted.
    """
    from distill.trigger import TriggerConfig
    from gateway.continual.check import CheckConfig, ContinualCheck
    from gateway.continual.store import LoopStore, loop_document
    from gateway.continual.watch import AdminHost
    from rollout.admin_client import AdminClient
    from rollout.lease import process_identity
    from statestore import open_store

    secret = admin_token(token, state_dir)
    minimum = min_new_records or (2000 if task_kind(task, state_dir, registry_url) == "classify" else 300)
    try:
        config = CheckConfig(
            task=task,
            budget_minutes=budget,
            trigger=TriggerConfig(minimum, drift),
            threads=threads,
            auto_rollout=rollout,
            rollout=json.loads(rollout_config) if rollout_config else {},
            gate=json.loads(gate) if gate else {},
            recipe=json.loads(recipe_json) if recipe_json else {},
            shadow_root=shadow_url,
            registry_url=registry_url,
        )
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}") from exc
    # A reload answers once the new models are loaded: a longer wait than the other admin calls.
    store = open_store(None, state_dir)
    lease = store.lease(process_identity("kdgate distill watch"), "continual")
    loop = LoopStore(store.document(loop_document(task)))
    with AdminClient(url, secret, timeout=30.0) as admin, contextlib.closing(store):
        check = ContinualCheck(state_dir, AdminHost(admin), config, loop, lease=lease)
        try:
            while True:
                try:
                    console.print(f"{time.strftime('%H:%M:%S')} {asyncio.run(check.run_once())}")
                except Exception as exc:  # the watch survives a failed check; the next one tries again
                    console.print(f"[red]{time.strftime('%H:%M:%S')} check failed: {exc}[/red]")
                    if once:
                        raise typer.Exit(1) from exc
                if once:
                    return
                time.sleep(interval)
        finally:
            lease.release()  # a gateway's loop may take it at once, not only when this process ends
