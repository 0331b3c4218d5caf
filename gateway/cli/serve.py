"""`kdgate serve`: run the gateway under uvicorn; a fresh state builds its default models meanwhile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import DEFAULT_STATE, StateDir, console, offline


def serve(
    state_dir: StateDir = DEFAULT_STATE,
    # None: the setting from KDGATE_HOST / KDGATE_PORT or --config, else 127.0.0.1:8000 (gateway/settings.py)
    host: Annotated[
        str | None,
        typer.Option(help="Interface to bind (0.0.0.0 in containers) [default: KDGATE_HOST or 127.0.0.1]."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="TCP port (0: any free one) [default: KDGATE_PORT or 8000]."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of settings (see gateway/settings.py).")
    ] = None,
    build: Annotated[
        bool, typer.Option(help="Build missing default models in the background (teachers first).")
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Gateway processes on the one port (default 1, or KDGATE_WORKERS); see workers.py."
        ),
    ] = None,
) -> None:
    """Start the gateway. On a fresh state it listens at once and builds the default models in a child
    below serving: each task answers as soon as its teacher is built (the generate teacher in seconds,
    the classify teacher in minutes), students join when gated. Until then a task answers 503 with
    Retry-After; `/readyz` and `kdgate models build-status` show where the build is.

    With `--workers N` (N > 1) a supervisor runs N such gateways on the one port (SO_REUSEPORT), sharing
    the state dir: one rollout controller, one shadow teacher, the judge reading them all."""
    offline()
    import uvicorn
    from pydantic import ValidationError

    from gateway.app import create_app
    from gateway.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(config, state_dir=state_dir, host=host, port=port, workers=workers)
    except ValidationError as exc:  # one line per bad setting, named as KDGATE_* and the YAML key say it
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            console.print(f"[red]setting {name}: {error['msg']}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    if not build:
        settings = settings.model_copy(update={"build_missing_models": False})
    if settings.workers > 1:
        from gateway.cli.workers import WorkerSpec, supervise

        spec = WorkerSpec(
            state_dir=str(settings.state_dir),
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            build=settings.build_missing_models,
            config=None if config is None else str(config),
        )
        raise typer.Exit(supervise(spec))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )
