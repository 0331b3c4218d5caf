"""What the CLI commands share: options, the console, and the admin API client."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from gateway.settings import token_path

# Wide tables when piped (rich assumes 80 columns without a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="KDGATE_STATE_DIR", help="Registry, traffic split, token and logs live here."
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


def offline() -> None:
    # Models load from installed packages and local files only; a hub lookup would hang air-gapped hosts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def admin_client(url: str, token: str | None, state_dir: Path) -> httpx.Client:
    if token is None:
        path = token_path(state_dir)
        if not path.exists():
            raise typer.BadParameter(f"no --token and no {path}; start the gateway first or pass --token")
        token = path.read_text().strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)


def call(client: httpx.Client, method: str, path: str, body: object | None = None) -> dict[str, Any]:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the gateway at {client.base_url}: {exc}[/red]")
        raise typer.Exit(2) from exc
    payload = response.json()
    if response.status_code >= 400:
        console.print(f"[red]{response.status_code}: {payload.get('error', payload)}[/red]")
        raise typer.Exit(1)
    return dict(payload)
