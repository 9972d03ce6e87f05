"""deploy/alerts.yml: valid rules, each alert tested firing and silent with
``promtool test rules deploy/alerts.test.yml``, and only metrics the code
defines, in the rules and in the Grafana dashboard.

promtool comes from Debian's ``prometheus`` package; .ci/run installs it.
Without it these tests fail: a skipped alert test is an untested alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapters.metrics import Metrics
from tests.support.deploy_kit import ALERT_TESTS, ALERTS, DEPLOY, alert_rules, family, metrics_used


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does it in CI)")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, cwd=DEPLOY, capture_output=True, text=True, timeout=120)


def test_the_alert_rules_are_valid(promtool: str) -> None:
    result = _run(promtool, "check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_prometheus_accepts_compose_s_configuration(promtool: str, tmp_path: Path) -> None:
    """deploy/prometheus.yml as Prometheus itself reads it (its rule file at
    the path compose mounts it, here a copy beside it): every scrape job, the
    reconcile one through node-exporter included."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"invoice-sm-processor", "invoice-sm-deliverer", "invoice-sm-reconcile"} <= jobs


def test_the_alert_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_promtool(promtool: str, tmp_path) -> None:
    # The runner can fail: the same tests with a firing case expected silent.
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    doc["rule_files"] = [str(ALERTS)]
    doc["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(doc))
    result = subprocess.run([promtool, "test", "rules", str(broken)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "never tested firing"
    assert names - silent == set(), "never tested silent"


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_rules_and_the_dashboard_use_only_metrics_the_code_defines() -> None:
    defined = {f.name for f in text_string_to_metric_families(Metrics().render().decode())}
    used = metrics_used()
    assert {"invoice_sm_partition_stalled", "invoice_sm_divergences_total", "invoice_sm_token_refresh_failures_total"} <= set(
        used
    )
    unknown = {name: sorted(where) for name, where in used.items() if family(name) not in defined}
    assert unknown == {}


def test_the_dashboard_shows_every_metric_the_alerts_use() -> None:
    used = metrics_used()
    alert_only = {name for name, where in used.items() if all(w.startswith("alerts.yml") for w in where)}
    assert alert_only == set()
