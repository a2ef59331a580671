"""The Grafana dashboard and its provisioning files."""

from __future__ import annotations

import json

import yaml

from mlops_assets.settings import PROJECT_ROOT

from .promql_names import metric_names

GRAFANA_DIR = PROJECT_ROOT / "deploy" / "monitoring" / "grafana"
DASHBOARD = json.loads((GRAFANA_DIR / "dashboard.json").read_text())
PANELS = [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]


def exprs(panel: dict) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def panel_titled(word: str) -> dict:
    matches = [panel for panel in PANELS if word.lower() in panel["title"].lower()]
    assert matches, f"no panel titled with {word!r}"
    return matches[0]


def test_every_panel_queries_only_contract_metrics(contract_series: set[str]) -> None:
    for panel in PANELS:
        assert exprs(panel), f"panel {panel['title']!r} has no query"
        for expr in exprs(panel):
            names = metric_names(expr)
            assert names, f"{panel['title']!r}: no metric in {expr!r}"
            assert names <= contract_series, f"{panel['title']!r} uses {names - contract_series}"


def test_template_variables_use_contract_metrics(contract_series: set[str]) -> None:
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            metric = variable["definition"].split("(", 1)[1].split(",", 1)[0].strip()
            assert metric in contract_series


def test_dashboard_has_the_required_panels() -> None:
    latency = " ".join(exprs(panel_titled("request latency")))
    assert all(f"histogram_quantile({q}," in latency for q in ("0.5", "0.95", "0.99"))
    assert "mlops_request_latency_seconds_bucket" in latency
    expected = {
        "traffic split": "mlops_ingress_requests_total",
        "error rate": "mlops_request_errors_total",
        "score distribution": "mlops_prediction_score_bucket",
        "predicted class": "mlops_predictions_total",
        "drift share": "mlops_drift_share",
        "model version": "mlops_model_version_info",
        "feature lookup": "mlops_feature_lookup_seconds_bucket",
        "accuracy": "mlops_model_accuracy",
    }
    for title, metric in expected.items():
        assert any(metric in expr for expr in exprs(panel_titled(title))), title
    assert 'by (model_name, revision)' in " ".join(exprs(panel_titled("traffic split")))  # one ingress, many models


def test_panels_do_not_overlap_and_ids_are_unique() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']!r} overlaps another panel"
        cells |= area


def test_panels_use_the_datasource_variable() -> None:
    datasource_vars = [v["name"] for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${%s}" % datasource_vars[0], panel["title"]


def test_provisioning_files_parse() -> None:
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"].startswith("http://127.0.0.1:")
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "mlops.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
