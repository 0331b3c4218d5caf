"""`kdgate traffic get|set`: the traffic split of a running gateway, over its admin API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gateway.cli.common import (
    DEFAULT_STATE,
    DEFAULT_URL,
    GatewayUrl,
    StateDir,
    Token,
    admin,
    console,
)

traffic_app = typer.Typer(help="Read or set the traffic split of a task (admin API).", no_args_is_help=True)


@traffic_app.command("get")
def traffic_get(
    url: GatewayUrl = DEFAULT_URL, token: Token = None, state_dir: StateDir = DEFAULT_STATE
) -> None:
    """Show the weights of every task."""
    with admin(url, token, state_dir) as client:
        traffic = client.traffic()
    table = Table("task", "model", "weight")
    for task, weights in traffic.items():
        for model, weight in sorted(weights.items()):
            table.add_row(task, model, str(weight))
    console.print(table)


@traffic_app.command("set")
def traffic_set(
    task: Annotated[str, typer.Argument(help="Task, e.g. classify.")],
    weights: Annotated[list[str], typer.Argument(help="REF=WEIGHT pairs summing to 100.")],
    url: GatewayUrl = DEFAULT_URL,
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Set the split, e.g. `kdgate traffic set classify classify-student@1=25 classify-teacher@1=75`."""
    parsed: dict[str, int] = {}
    for pair in weights:
        ref, sep, value = pair.rpartition("=")
        if not sep or not ref or not value.lstrip("-").isdigit():
            raise typer.BadParameter(f"expected REF=WEIGHT, got {pair!r}", param_hint="WEIGHTS")
        parsed[ref] = int(value)
    with admin(url, token, state_dir) as client:
        result = client.set_traffic(task, parsed)
    console.print(f"{task}: {result['weights']}")
