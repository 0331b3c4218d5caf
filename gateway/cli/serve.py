"""`kdgate serve`: build the default models if missing, then run the gateway under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import DEFAULT_STATE, StateDir, console, offline


def serve(
    state_dir: StateDir = DEFAULT_STATE,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in containers).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of settings (see gateway/settings.py).")
    ] = None,
    build: Annotated[bool, typer.Option(help="Build missing default models before serving.")] = True,
) -> None:
    """Start the gateway; on first start build the default models (with progress), then reuse them."""
    offline()
    import uvicorn

    from distill.classify.build import ClassifyRecipe, ensure_default_classify_models
    from distill.registry import Registry
    from gateway.app import create_app
    from gateway.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(config, state_dir=state_dir, host=host, port=port)
    if build and settings.build_missing_models:
        registry = Registry(settings.state_dir)
        ensure_default_classify_models(registry, ClassifyRecipe(dataset=settings.dataset), log=console.print)
        if settings.build_generate:
            from distill.generate.build import GenerateRecipe, ensure_default_generate_models

            ensure_default_generate_models(registry, GenerateRecipe(), log=console.print)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )
