"""`kdgate rollout …` and `kdgate events`: progressive rollouts on a running gateway (admin API), and the
standalone controller that drives them from Prometheus (`rollout run`)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from gateway.cli.common import (
    DEFAULT_STATE,
    DEFAULT_URL,
    GatewayUrl,
    StateDir,
    Token,
    admin,
    admin_token,
    console,
    utc_time,
)

rollout_app = typer.Typer(
    help="Progressive rollouts: start, inspect, steer (admin API).", no_args_is_help=True
)


@rollout_app.command("start")
def rollout_start(
    task: Annotated[str, typer.Argument(help="Task, e.g. classify.")],
    candidate: Annotated[str, typer.Argument(help="Model ref to roll out, e.g. classify-student@2.")],
    baseline: Annotated[str | None, typer.Option(help="Default: the model serving the task now.")] = None,
    steps: Annotated[str | None, typer.Option(help="Comma-separated weights, e.g. 5,25,50,100.")] = None,
    min_dwell_s: Annotated[float | None, typer.Option(help="Minimum seconds per step.")] = None,
    min_samples: Annotated[int | None, typer.Option(help="Minimum shadow comparisons per step.")] = None,
    max_disagreement: Annotated[float | None, typer.Option(help="Absolute max disagreement rate.")] = None,
    max_kl: Annotated[float | None, typer.Option(help="Max mean KL(teacher ‖ candidate), nats.")] = None,
    error_budget: Annotated[float | None, typer.Option(help="Error budget, e.g. 0.01.")] = None,
    p99_slo_ms: Annotated[float | None, typer.Option(help="p99 latency SLO in ms.")] = None,
    url: GatewayUrl = DEFAULT_URL,
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Start moving traffic to CANDIDATE step by step; the judge promotes or rolls back by itself."""
    body: dict[str, Any] = {"task": task, "candidate": candidate}
    options = {
        "baseline": baseline,
        "min_dwell_s": min_dwell_s,
        "min_samples": min_samples,
        "max_disagreement": max_disagreement,
        "max_kl": max_kl,
        "error_budget": error_budget,
        "p99_slo_ms": p99_slo_ms,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    if steps is not None:
        try:
            body["steps"] = [int(s) for s in steps.split(",")]
        except ValueError as exc:
            raise typer.BadParameter(f"steps must be integers like 5,25,50,100, got {steps!r}") from exc
    with admin(url, token, state_dir) as client:
        result = client.start_rollout(body)
    console.print(_state_line(result["state"]))


def _state_line(state: Any) -> str:
    return (
        f"{state['task']}: {state['phase']} — {state['candidate']} at {state['weight']}% "
        f"(step {state['step_index'] + 1}) vs {state['baseline']}; {state['last_reason']}"
    )


def _status_table(result: dict[str, Any], previous: tuple[float, float] | None) -> Table:
    state, config = result["state"], result["config"]
    table = Table(title=_state_line(state), show_lines=False)
    for column in ("metric", "verdict", "estimate", "lower", "upper", "n", "threshold"):
        table.add_column(column)
    for e in result.get("evidence", []):
        fmt = [
            f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
            for v in (e["estimate"], e["lower"], e["upper"], e["n"], e["threshold"])
        ]
        table.add_row(e["metric"], e["verdict"], *fmt)
    table.caption = _eta(result, config, previous)
    return table


def _eta(result: dict[str, Any], config: dict[str, Any], previous: tuple[float, float] | None) -> str:
    """ETA of the current step from the sample rate between two polls (samples still needed / rate)."""
    evidence = {e["metric"]: e for e in result.get("evidence", [])}
    n = float(evidence.get("disagreement", {}).get("n", 0))
    needed = max(0.0, float(config["min_samples"]) - n)
    dwell_left = max(0.0, result["state"]["step_started_at"] + config["min_dwell_s"] - time.time())
    if previous is None or result["state"]["phase"] != "progressing":
        return f"samples this step: {n:.0f} (min {config['min_samples']}), dwell left {dwell_left:.0f} s"
    rate = (n - previous[0]) / max(1e-9, time.time() - previous[1])
    eta = max(dwell_left, needed / rate) if rate > 0 else float("inf")
    return f"samples {n:.0f} at {rate:.1f}/s; step ETA ≥ {eta:.0f} s (the judge may need more evidence)"


@rollout_app.command("status")
def rollout_status(
    task: Annotated[str, typer.Argument()] = "classify",
    url: GatewayUrl = DEFAULT_URL,
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Phase, weights and the judge's evidence per guarded metric."""
    with admin(url, token, state_dir) as client:
        console.print(_status_table(client.rollout(task), None))


@rollout_app.command("watch")
def rollout_watch(
    task: Annotated[str, typer.Argument()] = "classify",
    url: GatewayUrl = DEFAULT_URL,
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
    interval: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
) -> None:
    """Redraw the rollout's state, evidence and step ETA until it ends (Ctrl-C to leave)."""
    previous: tuple[float, float] | None = None
    with admin(url, token, state_dir) as client, Live(console=console, auto_refresh=False) as live:
        while True:
            result = client.rollout(task)
            live.update(_status_table(result, previous), refresh=True)
            evidence = {e["metric"]: e for e in result.get("evidence", [])}
            previous = (float(evidence.get("disagreement", {}).get("n", 0)), time.time())
            if result["state"]["phase"] in ("promoted", "rolled_back", "idle"):
                return
            time.sleep(interval)


def _command(name: str) -> None:
    def run(
        task: Annotated[str, typer.Argument()] = "classify",
        reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "",
        url: GatewayUrl = DEFAULT_URL,
        token: Token = None,
        state_dir: StateDir = DEFAULT_STATE,
    ) -> None:
        with admin(url, token, state_dir) as client:
            console.print(_state_line(client.command_rollout(task, name, reason)["state"]))

    run.__doc__ = {
        "pause": "Freeze the rollout at its current weights.",
        "resume": "Resume a paused rollout (the step's evidence starts afresh).",
        "promote": "Promote the candidate to 100% now.",
        "abort": "Roll back now: candidate to 0%, baseline to 100%.",
    }[name]
    rollout_app.command(name)(run)


for _name in ("pause", "resume", "promote", "abort"):
    _command(_name)


@rollout_app.command("run")
def rollout_run(
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL (metric source).")],
    gateway: Annotated[str, typer.Option(help="Gateway base URL (weights applied via its admin API).")],
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
    tick: Annotated[float, typer.Option(help="Seconds between judge looks.")] = 5.0,
    min_window_s: Annotated[float, typer.Option(help="Shortest PromQL window: ≥ 2 scrape intervals.")] = 30.0,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="KDGATE_STORE",
            help="The gateways' state store (postgresql://…); default: the files under --state-dir.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Drive rollouts standalone from Prometheus (run gateways with KDGATE_ROLLOUT_DRIVER=external)."""
    from rollout.admin_client import AdminClient
    from rollout.driver import Controller
    from rollout.lease import process_identity
    from rollout.prometheus import PrometheusSource
    from statestore import StoreUnavailable, open_store

    try:
        shared = open_store(store, state_dir)
    except StoreUnavailable as exc:
        raise typer.BadParameter(str(exc), param_hint="--store") from exc
    lease = shared.lease(process_identity("kdgate rollout run"))
    controller = Controller(
        shared.rollouts,
        shared.audit,
        PrometheusSource(prometheus, min_window_s=min_window_s),
        AdminClient(gateway, admin_token(token, state_dir), timeout=5.0),
        lease=lease,
    )
    where = "the PostgreSQL store" if store else state_dir / "rollout"
    console.print(f"driving rollouts in {where} from {prometheus} every {tick:g} s (Ctrl-C to stop)")
    waiting = False
    while True:
        controller.tick()
        if not controller.leading and not waiting:  # said once: another controller drives them now
            try:
                holder = (lease.holder() or {}).get("identity", "another process")
            except StoreUnavailable:
                holder = "another process (the store is unreachable)"
            console.print(f"waiting for the controller lease, held by {holder}")
        waiting = not controller.leading
        time.sleep(tick)


def events(
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(help="Most recent N.")] = 50,
    url: GatewayUrl = DEFAULT_URL,
    token: Token = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="Raw JSON lines.")] = False,
) -> None:
    """The audit log of rollout transitions: time, actor, from → to, weights, reason."""
    with admin(url, token, state_dir) as client:
        rows = client.events(task, limit)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("time", "task", "actor", "from → to", "weights", "reason")
    for e in rows:
        table.add_row(
            utc_time(e["at"]),
            e["task"],
            e["actor"],
            f"{e['from_phase']} → {e['to_phase']}",
            json.dumps(e["weights"]),
            e["reason"],
        )
    console.print(table)
