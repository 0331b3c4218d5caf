"""`kdgate shadow stats|rates|rate`: the shadow log on disk, and the shadow rates of a running gateway."""

from __future__ import annotations

from pathlib import Path
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
    utc_time,
)

shadow_app = typer.Typer(
    help="The shadow: its log of teacher soft outputs, and how much traffic it scores.", no_args_is_help=True
)


@shadow_app.command("stats")
def shadow_stats_command(
    task: Annotated[str, typer.Argument()] = "classify",
    state_dir: StateDir = DEFAULT_STATE,
    root: Annotated[
        str | None,
        typer.Option(envvar="KDGATE_SHADOW_URL", help="Shadow log URL (default <state-dir>/shadow)."),
    ] = None,
) -> None:
    """Records, agreement with the teacher, mean KL and size on disk per served model."""
    from distill.shadowlog.reader import shadow_stats

    table = Table("model", "records", "agreement", "mean KL", "MB", "first", "last")
    for row in shadow_stats(root or str(Path(state_dir) / "shadow"), task):
        agree, kl = row["agreement"], row["mean_kl"]
        table.add_row(
            row["served_model"],
            str(row["records"]),
            "-" if agree is None else f"{agree:.4f}",
            "-" if kl is None else f"{kl:.4f}",
            f"{row['bytes'] / 1e6:.2f}",
            utc_time(row["first_ts"]),
            utc_time(row["last_ts"]),
        )
    console.print(table)


@shadow_app.command("rates")
def shadow_rates_command(
    url: GatewayUrl = DEFAULT_URL, token: Token = None, state_dir: StateDir = DEFAULT_STATE
) -> None:
    """The shadow rate of each loaded student, and what the shadow scored and dropped (live window)."""
    with admin(url, token, state_dir) as client:
        result = client.shadow()
    if not result["enabled"]:
        console.print("[yellow]the shadow is off on this gateway (shadow_enabled: false)[/yellow]")
    table = Table("model", "task", "rate", "set by", "eligible", "compared", "dropped")
    for row in result["models"]:
        table.add_row(
            row["ref"],
            row["task"],
            f"{row['rate']:.2f}",
            row["source"],
            f"{row['eligible']:.0f}",
            f"{row['compared']:.0f}",
            f"{row['dropped']:.0f}",
        )
    console.print(table)


@shadow_app.command("rate")
def shadow_rate_command(
    task: Annotated[str, typer.Argument(help="Task, e.g. classify.")],
    rates: Annotated[
        list[str], typer.Argument(help="REF=RATE pairs, RATE in [0, 1]; REF=default drops an override.")
    ],
    url: GatewayUrl = DEFAULT_URL,
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Set the share of a student's requests the teacher shadows, at run time and kept across restarts,
    e.g. `kdgate shadow rate classify classify-student@2=0.25`."""
    parsed: dict[str, float | None] = {}
    for pair in rates:
        ref, _, value = pair.rpartition("=")
        if not ref or not (value == "default" or _is_number(value)):
            raise typer.BadParameter(f"expected REF=RATE or REF=default, got {pair!r}", param_hint="RATES")
        parsed[ref] = None if value == "default" else float(value)  # the gateway checks the range
    with admin(url, token, state_dir) as client:
        result = client.set_shadow_rates(task, parsed)
    console.print(f"{task}: {result['rates']}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
