"""The README's main command, end to end with the real Dagster daemon: drift -> sensor -> retrain ->
gate -> canary rollout, then a losing candidate that must leave the champion serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest

from mlops_assets.loop import open_instance, run_step_events
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.serving.backend_local import LocalServingBackend
from mlops_assets.settings import PROJECT_ROOT, get_settings


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    settings = get_settings({"MLOPS_HOME": str(home)})
    command = [str(Path(sys.executable).with_name("mlops")), "demo", "--rows", "4000", "--drift-requests", "2500"]
    try:
        result = subprocess.run(command, cwd=PROJECT_ROOT, env=settings.env_for_subprocess(), capture_output=True,
                                text=True, timeout=900)
        summary = json.loads((home / "demo-summary.json").read_text()) if (home / "demo-summary.json").exists() else {}
        yield settings, result, summary
    finally:
        LocalServingBackend(settings).stop()


def test_demo_reports_success(demo):
    _, result, summary = demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "DEMO OK" in result.stdout
    assert set(summary["stage_seconds"]) >= {"5. drift report", "6. drift sensor -> retrain -> gate -> canary rollout"}


def test_drift_triggered_a_sensor_run_that_promoted_and_serves_the_new_champion(demo):
    settings, _, summary = demo
    won = summary["after_drift"]
    assert won["status"] == "SUCCESS" and won["promoted"]
    # the drifted traffic also decays accuracy: whichever sensor ticks first retrains, once
    trigger = won["tags"]["mlops/trigger"]
    assert trigger in ("drift", "performance")
    if trigger == "drift":
        assert float(won["tags"]["mlops/drift_share"]) >= settings.drift_threshold
    instance = open_instance(settings)
    run = instance.get_run_by_id(won["run_id"])
    assert run.tags.get("dagster/sensor_name") == f"churn_{trigger}_sensor", "the run was not launched by a sensor"
    retrains = instance.get_run_records(dg.RunsFilter(job_name="churn_retrain_job"))
    assert len(retrains) == 2, "one retrain per injected drift, not one per sensor"
    registry = ModelRegistry(settings)
    assert won["champion"] != summary["first_champion"]
    assert registry.version_of("previous") == summary["first_champion"]
    steps = run_step_events(instance, won["run_id"])
    assert "STEP_SUCCESS" in steps["inference_service"]


def test_losing_candidate_is_gated_and_the_champion_keeps_serving(demo):
    settings, _, summary = demo
    won, lost = summary["after_drift"], summary["losing_candidate"]
    assert lost["status"] == "FAILURE" and not lost["promoted"]
    assert lost["champion"] == won["champion"] == lost["serving_version"]
    instance = open_instance(settings)
    checks = [e.dagster_event.event_specific_data for e in instance.all_logs(lost["run_id"])
              if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
    gate = next(c for c in checks if c.check_name == "beats_champion")
    assert not gate.passed and "loses to" in gate.description
    steps = run_step_events(instance, lost["run_id"])
    assert "STEP_SUCCESS" not in steps.get("champion_model", []), "promotion ran despite the failed gate"
    # the endpoint still answers with the champion, at 100%
    status = LocalServingBackend(settings).status()
    assert status["running"] and str(status["revisions"]["stable"]["model_version"]) == won["champion"]
    assert "canary" not in (status.get("revisions") or {}) or status["revisions"]["canary"] is None
    spec = settings.dataset_spec()
    row = {spec.entity: 1, **{f: (1.0 if f not in spec.categorical else "x") for f in spec.features}}
    row.update(contract="one_year", payment_method="card", internet_service="dsl")
    answer = httpx.post(f"{status['endpoint']}/v1/models/{settings.model_name}:predict", json={"instances": [row]},
                        timeout=10).json()
    assert str(answer["model_version"]) == won["champion"]


def test_monitoring_assets_saw_the_drift(demo):
    settings, _, _ = demo
    instance = open_instance(settings)
    records = instance.fetch_materializations(dg.AssetKey(["churn", "drift_report"]), limit=10).records
    shares = [r.asset_materialization.metadata["drift_share"].value for r in records]
    assert max(shares) >= settings.drift_threshold and min(shares) < settings.drift_threshold
    html = Path(records[0].asset_materialization.metadata["report"].value)
    assert html.exists() and html.stat().st_size > 10_000
