"""Alert rules, their promtool unit tests, the scrape config and the Alertmanager config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests import prometheus_server as prom

from .promql_names import metric_names

MONITORING_DIR = prom.PROJECT_ROOT / "deploy" / "monitoring"

RULES = yaml.safe_load(prom.ALERT_RULES.read_text())
RULE_TESTS = yaml.safe_load(prom.ALERT_RULE_TESTS.read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule]
RECORDS = {rule["record"] for group in RULES["groups"] for rule in group["rules"] if "record" in rule}


def run(*cmd: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=prom.PROMETHEUS_DEPLOY_DIR, capture_output=True,
                          text=True, timeout=120)


def test_promtool_check_rules_passes(promtool_bin: Path) -> None:
    result = run(promtool_bin, "check", "rules", prom.ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    total = len(ALERTS) + len(RECORDS)
    assert f"SUCCESS: {total} rules found" in result.stdout


def test_promtool_test_rules_passes(promtool_bin: Path) -> None:
    result = run(promtool_bin, "test", "rules", prom.ALERT_RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_promtool_test_rules_catches_a_broken_threshold(promtool_bin: Path, tmp_path: Path) -> None:
    # The unit tests must be able to fail: lift the drift threshold and the firing case breaks.
    rules = prom.ALERT_RULES.read_text().replace("(mlops_drift_share) >= 0.3", "(mlops_drift_share) >= 0.5")
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "alerts_test.yml").write_text(prom.ALERT_RULE_TESTS.read_text())
    result = subprocess.run([str(promtool_bin), "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "MLOpsDataDrift" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    firing, silent = set(), set()
    for case in RULE_TESTS["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {alert["alert"] for alert in ALERTS}
    assert names - firing == set(), "alerts without a firing test"
    assert names - silent == set(), "alerts without a non-firing test"


def test_required_alerts_exist_with_severity_and_annotations() -> None:
    names = {alert["alert"] for alert in ALERTS}
    assert {"MLOpsHighLatencyP99", "MLOpsHighErrorRate", "MLOpsCanaryErrors", "MLOpsDataDrift",
            "MLOpsModelAccuracyDrop"} <= names
    for alert in ALERTS:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def test_rules_use_only_contract_metrics(contract_series: set[str]) -> None:
    allowed = contract_series | RECORDS | {"up", "ALERTS"}
    for group in RULES["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - allowed
            assert not unknown, f"{rule.get('alert') or rule.get('record')} uses {unknown}"


def test_canary_alert_selects_the_canary_revision() -> None:
    canary = next(alert for alert in ALERTS if alert["alert"] == "MLOpsCanaryErrors")
    assert 'revision="canary"' in canary["expr"]


def test_committed_scrape_config_is_valid(promtool_bin: Path) -> None:
    result = run(promtool_bin, "check", "config", prom.LOCAL_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(prom.LOCAL_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    files = jobs[prom.SERVING_JOB]["file_sd_configs"][0]["files"]
    # Relative to the config file, this is the default MLOPS_HOME's targets file.
    assert (prom.PROMETHEUS_DEPLOY_DIR / files[0]).resolve() == \
        prom.PROJECT_ROOT / ".mlops" / "serving" / "prometheus_targets.json"


def test_rendered_config_points_at_this_home(settings, promtool_bin: Path) -> None:
    path = prom.write_runtime_config(settings, interval="1s", ingress_target="127.0.0.1:18080")
    assert path == settings.home / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[prom.SERVING_JOB]["file_sd_configs"][0]["files"] == [str(prom.targets_file(settings))]
    assert jobs[prom.INGRESS_JOB]["static_configs"] == [{"targets": ["127.0.0.1:18080"]}]
    assert config["rule_files"] == [str(prom.ALERT_RULES)]
    assert config["global"]["evaluation_interval"] == "1s"
    result = run(promtool_bin, "check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_config_without_ingress_relies_on_file_sd(settings) -> None:
    config = prom.render_config(settings)
    assert [job["job_name"] for job in config["scrape_configs"]] == [prom.SERVING_JOB]
    assert "alerting" not in config


def test_alertmanager_config_is_valid(amtool_bin: Path) -> None:
    path = MONITORING_DIR / "alertmanager" / "alertmanager.yml"
    result = run(amtool_bin, "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    url = receivers[config["route"]["receiver"]]["webhook_configs"][0]["url"]
    assert url.startswith("http://127.0.0.1:")  # local servers listen on loopback only


def test_a_missing_binary_says_which_package_to_install(monkeypatch) -> None:
    monkeypatch.setattr(prom.shutil, "which", lambda name: None)
    monkeypatch.setattr(prom.os, "access", lambda path, mode: False)
    with pytest.raises(prom.PrometheusNotFound, match="apt-get install -y prometheus"):
        prom.find_promtool()
