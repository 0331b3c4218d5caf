"""`kdgate`: serve, inspect the registry, set traffic, steer rollouts, distil students.

kdgate serve --port 8000
kdgate models list
kdgate traffic set classify classify-student@1=25 classify-teacher@1=75
kdgate distill --task classify

Each group lives in its own module; this one assembles them into the one `kdgate` app. Commands import
the model libraries they need when they run, so `kdgate rollout status` starts fast.
"""

from __future__ import annotations

import typer

from gateway.cli.distill import distill_app
from gateway.cli.models import models_app
from gateway.cli.rollout import events, rollout_app
from gateway.cli.serve import serve
from gateway.cli.shadow import shadow_app
from gateway.cli.traffic import traffic_app

app = typer.Typer(
    help="kdgate — serve a teacher and its distilled students side by side.", no_args_is_help=True
)
app.command("events")(events)
app.command("serve")(serve)
app.add_typer(models_app, name="models")
app.add_typer(traffic_app, name="traffic")
app.add_typer(rollout_app, name="rollout")
app.add_typer(shadow_app, name="shadow")
app.add_typer(distill_app, name="distill")
