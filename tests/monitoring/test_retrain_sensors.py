from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from mlops_assets import automation
from mlops_assets.automation import RETRAIN_ASSETS, build_automation
from mlops_assets.automation import build_drift_sensor as _build_drift_sensor
from mlops_assets.automation import build_performance_sensor
from mlops_assets.settings import get_settings

SETTINGS = get_settings({})  # the local profile's defaults


def build_drift_sensor(**kwargs) -> dg.SensorDefinition:
    return _build_drift_sensor(SETTINGS, **kwargs)


performance_sensor = build_performance_sensor(SETTINGS)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def report(instance, asset: str = "drift_report", **metadata) -> int:
    """Record a materialization with ``metadata``; returns its storage id (the report id)."""
    key = dg.AssetKey(["churn", asset])  # the default model's copy of the graph
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, metadata=metadata))
    return instance.fetch_materializations(key, limit=1).records[0].storage_id


def drift(share: float, status: str = "ok", **extra) -> dict:
    return {"status": status, "drift_share": share,
            "drifted_columns": dg.MetadataValue.json(["monthly_charges", "total_charges"]), **extra}


def tick(sensor, instance, cursor: str | None = None) -> dg.SensorResult:
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_drift_at_threshold_requests_one_tagged_retrain(instance):
    report_id = report(instance, **drift(0.3))
    result = tick(build_drift_sensor(threshold=0.3), instance)
    [request] = result.run_requests
    assert request.run_key == str(report_id)
    assert request.tags["mlops/trigger"] == "drift" and request.tags["mlops/model"] == "churn"
    assert request.tags["mlops/drift_report_id"] == str(report_id)
    assert request.tags["mlops/drift_share"] == "0.300"
    cursor = json.loads(result.cursor)
    assert cursor["last_report_id"] == report_id and time.time() - cursor["last_trigger_time"] < 5


def test_below_threshold_skips_and_says_so(instance):
    report_id = report(instance, **drift(0.29))
    result = tick(build_drift_sensor(threshold=0.3), instance)
    assert not result.run_requests
    assert result.skip_reason.skip_message == (
        f"report {report_id}: drift share 0.290 below the threshold 0.300")
    assert json.loads(result.cursor) == {"last_report_id": report_id}


def test_the_same_report_never_triggers_twice(instance):
    report(instance, **drift(0.6))
    sensor = build_drift_sensor(cooldown_minutes=0)
    first = tick(sensor, instance)
    assert len(first.run_requests) == 1
    again = tick(sensor, instance, cursor=first.cursor)
    assert not again.run_requests and "already evaluated" in again.skip_reason.skip_message


def test_cool_down_holds_a_new_report_until_it_expires(instance):
    sensor = build_drift_sensor(cooldown_minutes=10)
    report(instance, **drift(0.5))
    first = tick(sensor, instance)
    second_id = report(instance, **drift(0.7))
    cooling = tick(sensor, instance, cursor=first.cursor)
    assert not cooling.run_requests
    assert "cooling down" in cooling.skip_reason.skip_message and "cool-down 10 min" in cooling.skip_reason.skip_message
    expired = json.dumps({**json.loads(first.cursor), "last_trigger_time": time.time() - 601})
    later = tick(sensor, instance, cursor=expired)
    assert [r.run_key for r in later.run_requests] == [str(second_id)]


def test_insufficient_data_never_triggers_even_with_a_high_share(instance):
    report_id = report(instance, status="insufficient_data", notes="12 rows in the window, fewer than the 200 needed")
    result = tick(build_drift_sensor(), instance)
    assert not result.run_requests
    assert result.skip_reason.skip_message == (
        f"report {report_id}: status insufficient_data: 12 rows in the window, fewer than the 200 needed; not judged")


def test_no_report_yet_is_a_skip(instance):
    result = tick(build_drift_sensor(), instance)
    assert result.skip_reason.skip_message == "no churn/drift_report materialization yet" and result.cursor is None


def test_performance_sensor_triggers_on_decay_only(instance):
    report(instance, "model_performance", decayed=False, decay_status="insufficient_labels")
    calm = tick(performance_sensor, instance)
    assert not calm.run_requests and "insufficient_labels" in calm.skip_reason.skip_message
    report_id = report(instance, "model_performance", decayed=True, decay_status="decayed",
                       accuracy_drop=0.12, roc_auc_drop=0.02)
    result = tick(performance_sensor, instance, cursor=calm.cursor)
    [request] = result.run_requests
    assert request.run_key == str(report_id)
    assert request.tags["mlops/trigger"] == "performance"
    assert request.tags["mlops/model_performance_id"] == str(report_id)
    assert request.tags["mlops/accuracy_drop"] == "0.120"


def test_jobs_sensors_and_schedules_load_against_the_graph():
    stubs = [dg.asset(name=key, key_prefix="churn")(lambda: None)
             for key in (*RETRAIN_ASSETS, "drift_report", "model_performance", "online_features")]
    built = build_automation(SETTINGS)
    defs = dg.Definitions(assets=stubs, jobs=built.jobs, sensors=built.sensors, schedules=built.schedules)
    dg.Definitions.validate_loadable(defs)
    retrain = defs.resolve_job_def("churn_retrain_job")
    assert {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys} == {
        f"churn/{name}" for name in RETRAIN_ASSETS}
    assert retrain.tags["mlops/model"] == "churn"
    assert {s.cron_schedule for s in built.schedules} == {"0 * * * *", "0 3 * * 1", "*/30 * * * *"}
    # the local profile (the default) runs the loop without anyone switching it on
    assert automation.default_status(SETTINGS) == dg.DefaultSensorStatus.RUNNING
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in built.sensors)


def test_a_report_without_a_drift_share_is_skipped_not_a_crash(instance):
    report_id = report(instance, status="ok")
    result = tick(build_drift_sensor(), instance)
    assert not result.run_requests
    assert result.skip_reason.skip_message == (
        f"report {report_id}: the report has no numeric drift_share; not judged")


def test_loading_the_code_does_not_import_the_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, mlops_assets.automation, mlops_assets.drift.assets, mlops_assets.monitoring.assets;"
            "print(sorted(m for m in ('evidently', 'scipy', 'mlflow', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _record_retrain_run(instance) -> str:
    """A retrain_job run in the instance, as a sensor, schedule or person would have launched it."""
    from mlops_assets.definitions import defs

    job = defs.resolve_job_def("churn_retrain_job")
    run = instance.create_run_for_job(job_def=job, run_config={})
    return run.run_id


def test_a_report_older_than_a_retrain_run_is_already_answered(instance):
    report_id = report(instance, asset="model_performance", decayed=True, accuracy_drop=0.2, decay_status="decayed")
    run_id = _record_retrain_run(instance)  # e.g. the drift sensor reacted to the same traffic first
    result = tick(performance_sensor, instance)
    assert not result.run_requests
    assert f"retrain run {run_id[:8]}" in result.skip_reason.skip_message and "already answers it" in result.skip_reason.skip_message
    assert json.loads(result.cursor)["last_report_id"] == report_id


def test_the_cool_down_counts_retrains_from_any_source(instance):
    _record_retrain_run(instance)
    time.sleep(0.01)
    report(instance, **drift(0.8))  # newer than the run, but within the cool-down
    result = tick(build_drift_sensor(cooldown_minutes=10), instance)
    assert not result.run_requests and "cooling down" in result.skip_reason.skip_message
