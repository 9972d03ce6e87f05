"""What the operators' kit under deploy/ uses: the metric names in the alert
rules (deploy/alerts.yml) and in the Grafana dashboards
(deploy/grafana/dashboards/*.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts.test.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

_METRIC = re.compile(r"\binvoice_sm_[a-z_]+\b")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(dashboard file: panel title, expr) of every query."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def metrics_used() -> dict[str, set[str]]:
    """Sample name (as PromQL names it) -> where it is used."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in _METRIC.findall(rule["expr"]):
            used.setdefault(name, set()).add(f"alerts.yml: {rule['alert']}")
    for where, expr in dashboard_exprs():
        for name in _METRIC.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def family(sample_name: str) -> str:
    """The metric family a sample name belongs to, as prometheus_client's parser names it."""
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name
