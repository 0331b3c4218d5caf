"""The dashboard and the Prometheus rules use only metrics the gateway exports, and promtool accepts them.

promtool comes from the Debian package `prometheus` (CI installs it); without it on PATH the promtool
tests are skipped locally and fail under CI (`CI` set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.serving.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "kdgate.json"
RULES = DASHBOARDS / "rules.yml"
RULES_TEST = DASHBOARDS / "tests" / "rules_test.yml"

# A metric name in PromQL; not a recording rule (`kdgate:...`) nor part of a longer identifier.
METRIC_NAME = re.compile(r"(?<![\w:])kdgate_[a-z0-9_]+")
# `metric{matchers}` and the label names of the matchers.
SELECTOR = re.compile(r"(?<![\w:])(kdgate_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
# Dashboard keys that hold PromQL (targets and annotations) or a template variable's query.
QUERY_KEYS = ("expr", "query", "definition")
# Grafana's interval variables, replaced for promtool (the others sit inside label regexes).
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def exported_samples() -> dict[str, set[str]]:
    """Sample names the gateway exposes on /metrics, each with its label names."""
    metrics = GatewayMetrics()
    touched = 0
    for metric in vars(metrics).values():
        if isinstance(metric, Counter | Gauge | Histogram | Summary):
            # prometheus_client has no public accessor for a metric's label names.
            labelnames = metric._labelnames
            child = metric.labels(*(f"x{i}" for i in range(len(labelnames)))) if labelnames else metric
            if isinstance(child, Histogram | Summary):
                child.observe(1.0)
            elif isinstance(child, Gauge):
                child.set(1.0)  # a "latest value wins" gauge (multiprocess_mode) refuses inc
            else:
                child.inc()
            touched += 1
    assert touched >= 10, "GatewayMetrics defines fewer metrics than the dashboards rely on"
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def _strings_under(node: Any, keys: tuple[str, ...]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from _strings_under(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings_under(item, keys)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_queries() -> list[str]:
    return [q for q in _strings_under(dashboard(), QUERY_KEYS) if q.strip()]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def data_panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows only group panels), nested ones included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.extend(panel.get("panels", []))
        if panel.get("type") != "row":
            found.append(panel)
    return found


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_exported_by_the_gateway(source: str) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_exprs()
    exported = exported_samples()
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert len(used) >= 10, f"found only {sorted(used)} in the {source}: is the extraction broken?"
    missing = sorted(used - exported.keys())
    assert not missing, f"the {source} uses metrics the gateway does not export: {missing}"


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_label_matched_exists_on_its_metric(source: str) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_exprs()
    exported = exported_samples()
    wrong = sorted(
        f"{name}{{{label}}}"
        for query in queries
        for name, matchers in SELECTOR.findall(query)
        for label in MATCHER_LABEL.findall(matchers)
        if name in exported and label not in exported[name]
    )
    assert not wrong, f"the {source} matches labels the gateway does not set: {wrong}"


def test_the_exported_names_are_what_prometheus_stores() -> None:
    # Counters get `_total`, histograms `_bucket/_sum/_count` (the names the queries must use).
    exported = exported_samples()
    for name in ("kdgate_requests_total", "kdgate_request_seconds_bucket", "kdgate_shadow_kl_sum"):
        assert name in exported
    assert "kdgate_requests" not in exported
    assert {"task", "model", "le"} <= exported["kdgate_request_seconds_bucket"]


def test_dashboard_parses_and_every_panel_has_a_datasource_and_a_target() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    task = variables["task"]
    assert "label_values(kdgate_traffic_weight, task)" in _strings_under(task, QUERY_KEYS)
    panels = data_panels()
    assert len(panels) >= 10
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel.get("title", "?")
        assert panel.get("datasource", {}).get("uid") == "${datasource}", f"{title}: no datasource"
        targets = panel.get("targets") or []
        assert targets, f"{title}: no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"{title}: a target without a query"
            assert target.get("refId"), f"{title}: a target without a refId"


def test_rules_have_summary_and_description() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 5
    for rule in alerts:
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule.get("labels", {}).get("severity"), rule["alert"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not on PATH (Debian package `prometheus`: apt-get install -y prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_promtool_check_rules() -> None:
    result = run(promtool(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run(promtool(), "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # promtool checks PromQL only inside rule files: wrap each panel query in a recording rule.
    tool = promtool()
    queries = [target["expr"] for panel in data_panels() for target in panel["targets"]] + [
        a["expr"] for a in dashboard()["annotations"]["list"] if a.get("expr")
    ]
    rules = []
    for i, query in enumerate(queries):
        for variable in GRAFANA_INTERVALS:
            query = query.replace(variable, "5m")
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run(tool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
