"""`python -m deploy.local`: the local topology for a person to try; it prints the URLs and runs until
Ctrl-C, then stops everything it started."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    seed: Annotated[
        Path,
        typer.Option(
            exists=True,
            file_okay=False,
            help="State dir whose registry is published to the bucket (the models to serve).",
        ),
    ] = Path(".kdgate"),
    replicas: Annotated[int, typer.Option(min=1, help="Gateway replicas behind haproxy.")] = 3,
    root: Annotated[
        Path | None, typer.Option(help="Where state dirs, logs and the TSDB go (default: a temp dir).")
    ] = None,
) -> None:
    """Start S3 (moto), PostgreSQL, gateway replicas, haproxy and Prometheus on 127.0.0.1.

    Example: `python -m deploy.local --seed .kdgate`, then
    `curl -X POST localhost:<haproxy>/classify -d '{"text": "hi"}' -H 'content-type: application/json'`.
    """
    from deploy.local.topology import Topology

    home = root or Path(tempfile.mkdtemp(prefix="kdgate-topology-"))
    typer.echo(f"starting {replicas} replicas from {seed} under {home} ...")
    with Topology(seed=seed, root=home, replicas=replicas) as topo:
        assert topo.s3 is not None and topo.prometheus is not None and topo.haproxy is not None
        typer.echo(f"gateway (haproxy)   {topo.url}")
        typer.echo(f"haproxy stats       http://127.0.0.1:{topo.haproxy.stats_port}/stats")
        for replica in topo.replicas:
            typer.echo(f"{replica.replica_id:<19} {replica.url}   log {replica.log}")
        typer.echo(f"prometheus          {topo.prometheus.url}")
        typer.echo(f"s3 (moto)           {topo.s3.endpoint}   registry {topo.registry_url}")
        typer.echo(f"state store         {topo.store_url}")
        typer.echo(f"admin token         {topo.admin_token}")
        typer.echo("Ctrl-C to stop")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopping ...")


if __name__ == "__main__":
    app()
