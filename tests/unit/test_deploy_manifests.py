"""deploy/: every overlay renders, every object it renders is valid for Kubernetes, and what the objects say
is what kdgate understands: its probes, its commands and flags, its settings, its secrets kept secret.

Rendering is kustomize's own (the `kustomize` binary, else the one built into `kubectl`); objects are
validated by kubernetes-validate's schemas in strict mode (an unknown field is an error, as a typo would
otherwise be dropped by the API server), the PodMonitor by the Prometheus Operator's models generated
from its CRD (kubernetes-validate knows no CRD).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import typer.main
import yaml

from gateway.cli import app
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "overlays").iterdir() if p.is_dir())
KUBERNETES = "1.37"  # the newest minor kubernetes-validate carries schemas for
SECRET_KEYS = {"KDGATE_STORE", "KDGATE_ADMIN_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _renderer() -> list[str]:
    # `make install` puts a pinned kustomize beside the venv's python; else whichever is on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if kustomize := shutil.which("kustomize", path=search):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    pytest.fail("rendering deploy/ needs kustomize or kubectl (its built-in kustomize) on PATH")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    overlay = ROOT / "deploy" / "overlays" / request.param
    out = subprocess.run([*_renderer(), str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = (d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield pod, container


def _schema_error(doc: dict[str, Any]) -> str | None:
    """What is wrong with an object for Kubernetes: the field and the rule (not the whole schema)."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path))
        return f"{doc['kind']}/{doc['metadata']['name']} at /{where}: {exc.message}"
    return None


def test_every_object_is_valid_for_kubernetes(rendered: list[dict[str, Any]]) -> None:
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor

    for doc in rendered:
        if doc["kind"] == "PodMonitor":
            # The models ignore unknown fields: a round trip that loses one shows it.
            typed = PodMonitor.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
            assert typed == doc, f"PodMonitor fields its CRD does not have: {doc}"
        else:
            error = _schema_error(doc)
            assert error is None, error


def test_the_gateway_is_probed_where_kdgate_answers(rendered: list[dict[str, Any]]) -> None:
    gateway = _one(rendered, "Deployment", "kdgate")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"]["port"] in ports
    assert ports["http"] == int(gateway["command"][gateway["command"].index("--port") + 1])
    assert gateway["command"][gateway["command"].index("--host") + 1] == "0.0.0.0"
    assert set(gateway["resources"]) == {"requests", "limits"}


def test_selectors_reach_the_gateway_pods(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "kdgate")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [_one(rendered, "Service", "kdgate")["spec"]["selector"]]
    selectors.append(_one(rendered, "PodDisruptionBudget", "kdgate")["spec"]["selector"]["matchLabels"])
    selectors += [d["spec"]["selector"]["matchLabels"] for d in rendered if d["kind"] == "PodMonitor"]
    for selector in selectors:
        assert selector.items() <= labels.items()
    for hpa in (d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_loop_is_one_replica_and_there_is_no_controller_deployment(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    assert set(deployments) == {"kdgate", "kdgate-distill-watch"}  # the lease elects a controller
    watch = deployments["kdgate-distill-watch"]["spec"]
    assert watch["replicas"] == 1
    assert watch["strategy"]["type"] == "Recreate"  # an update never runs two loops at once


def test_secrets_are_referenced_never_inlined(rendered: list[dict[str, Any]]) -> None:
    assert not [d for d in rendered if d["kind"] == "Secret"]
    config = _one(rendered, "ConfigMap", "kdgate-config")["data"]
    assert not SECRET_KEYS & set(config)
    for _, container in _containers(rendered):
        env = {e["name"]: e for e in container.get("env", [])}
        for key in SECRET_KEYS & set(env):
            assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
        assert "KDGATE_STORE" in env
    assert "postgresql://" not in yaml.safe_dump_all(rendered)


def test_containers_run_as_an_unprivileged_user(rendered: list[dict[str, Any]]) -> None:
    image_user = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), flags=re.M)[-1]
    for pod, container in _containers(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(image_user) != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        if container["securityContext"].get("readOnlyRootFilesystem"):
            # Where the image's processes write: the state dir, temp files, $HOME's caches.
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/state", "/tmp", "/home/kdgate"} <= mounted


def _parse(cli: Any, args: list[str]) -> None:
    """Parse an argv as kdgate would, down to the command it names, without running it: an unknown
    command or flag, or a bad value, raises. (Typer's click is its own copy: groups are known by their
    subcommands, not by a class.)"""
    ctx = cli.make_context("kdgate", list(args))
    while getattr(ctx.command, "commands", None):
        name, sub, rest = ctx.command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)


def _cli_envvars(command: Any) -> set[str]:
    names = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    for sub in getattr(command, "commands", {}).values():
        names |= _cli_envvars(sub)
    return names


def test_commands_and_settings_are_kdgate_s(rendered: list[dict[str, Any]]) -> None:
    cli = typer.main.get_command(app)
    known = {f"KDGATE_{name.upper()}" for name in Settings.model_fields} | _cli_envvars(cli)
    config = _one(rendered, "ConfigMap", "kdgate-config")["data"]
    for _, container in _containers(rendered):
        program, *args = container["command"]
        assert program == "kdgate"
        _parse(cli, args)
        env = {e["name"] for e in container.get("env", [])} | set(config)
        unknown = {n for n in env if n.startswith("KDGATE_")} - known
        assert not unknown, f"{container['name']}: no such kdgate setting {sorted(unknown)}"


def test_a_flag_kdgate_lacks_is_caught() -> None:
    """The parse above is a real check: it refuses a misspelt flag and a value of the wrong type."""
    cli = typer.main.get_command(app)
    with pytest.raises(Exception, match="No such option: --intervall"):
        _parse(cli, ["distill", "watch", "--intervall", "60"])
    with pytest.raises(typer.BadParameter, match="valid integer"):
        _parse(cli, ["serve", "--port", "http"])
    with pytest.raises(Exception, match="No such command 'whatch'"):
        _parse(cli, ["distill", "whatch"])
