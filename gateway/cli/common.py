"""What the CLI commands share: options, the console, and the admin client with the CLI's error exits."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.settings import token_path
from rollout.admin_client import AdminClient, AdminError

# Wide tables when piped (rich assumes 80 columns without a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="KDGATE_STATE_DIR", help="Registry, traffic split, token and logs live here."
    ),
]
RegistryUrl = Annotated[
    str | None,
    typer.Option(
        "--registry-url",
        envvar="KDGATE_REGISTRY_URL",
        help="Model registry URL (s3://bucket/prefix or a path; default <state-dir>/models).",
    ),
]
GatewayUrl = Annotated[str, typer.Option("--url", envvar="KDGATE_URL", help="Base URL of a running gateway.")]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="KDGATE_ADMIN_TOKEN",
        help="Admin token (default: read from <state-dir>/admin.token).",
    ),
]
DEFAULT_STATE = Path(".kdgate")
DEFAULT_URL = "http://127.0.0.1:8000"


def utc_time(ts: float | None) -> str:
    """An epoch time as operators read it.

    >>> utc_time(1796406568.43)
    '2026-12-04 17:49:28 UTC'
    >>> utc_time(None)
    '-'
    """
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def offline() -> None:
    # Models load from installed packages and local files only; a hub lookup would hang air-gapped hosts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def admin_token(token: str | None, state_dir: Path) -> str:
    """The --token given, or the one the gateway wrote into its state dir."""
    if token is not None:
        return token
    path = token_path(state_dir)
    if not path.exists():
        raise typer.BadParameter(f"no --token and no {path}; start the gateway first or pass --token")
    return path.read_text().strip()


@contextmanager
def admin(url: str, token: str | None, state_dir: Path) -> Iterator[AdminClient]:
    """An admin client for a command's body; a failed call ends the command with the gateway's error
    (exit 1), or exit 2 when the gateway cannot be reached.

        with admin(url, token, state_dir) as client:
            console.print(client.traffic())
    """
    with AdminClient(url, admin_token(token, state_dir), timeout=10.0) as client:
        try:
            yield client
        except AdminError as exc:
            if exc.status is None:
                console.print(f"[red]cannot reach the gateway at {client.base_url}: {exc.detail}[/red]")
                raise typer.Exit(2) from exc
            console.print(f"[red]{exc.status}: {exc.detail}[/red]")
            raise typer.Exit(1) from exc
