"""`kdgate distill watch`: the continual re-distillation loop beside a running gateway."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

import typer

from gateway.cli.common import DEFAULT_STATE, GatewayUrl, StateDir, Token, console
from gateway.settings import token_path


def watch(
    url: GatewayUrl = "http://127.0.0.1:8000",
    state_dir: StateDir = DEFAULT_STATE,
    token: Token = None,
    task: Annotated[
        str, typer.Option(help="Task whose student to re-distil: classify or generate.")
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
) -> None:
    """Watch the shadow log; re-distil, gate, register, and start a canary on the running gateway.

    Shares the gateway's state dir; use it instead of the gateway's built-in loop (redistill_enabled),
    not beside it. Runs are one at a time, niced, and resumable if interrupted.
    """
    from distill.trigger import TriggerConfig
    from gateway.continual.check import CheckConfig, ContinualCheck
    from gateway.continual.watch import AdminHost, GatewayClient

    if token is None:
        path = token_path(state_dir)
        if not path.exists():
            raise typer.BadParameter(f"no --token and no {path}; start the gateway first or pass --token")
        token = path.read_text().strip()
    if task not in ("classify", "generate"):
        raise typer.BadParameter(f"unknown task {task!r} (classify or generate)", param_hint="--task")
    minimum = min_new_records or (2000 if task == "classify" else 300)
    try:
        config = CheckConfig(
            task=task,
            budget_minutes=budget,
            trigger=TriggerConfig(minimum, drift),
            threads=threads,
            auto_rollout=rollout,
            rollout=json.loads(rollout_config) if rollout_config else {},
            gate=json.loads(gate) if gate else {},
        )
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}") from exc
    check = ContinualCheck(state_dir, AdminHost(GatewayClient(url, token)), config)
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
