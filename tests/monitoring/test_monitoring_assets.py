from __future__ import annotations


import dagster as dg
import pandas as pd
import pytest

from mlops_assets.data.generator import production_window
from mlops_assets.drift import assets as drift_assets
from mlops_assets.drift.assets import drift_report
from mlops_assets.monitoring import assets as monitoring_assets
from mlops_assets.monitoring.assets import model_performance, prediction_log
from mlops_assets.monitoring.loop_metrics import read_loop_gauges
from mlops_assets.monitoring.stores import LocalMonitoring

from .traffic import WINDOW_END, log_records, write_labels, write_log

END = WINDOW_END.isoformat()


def _materialize(assets, settings, config: dict | None = None, **kwargs):
    run_config = {"ops": config} if config else None
    return dg.materialize_to_memory(assets, resources={"settings": settings, "monitoring": LocalMonitoring(settings)},
                                    run_config=run_config, **kwargs)


def _metadata(result, key: str = "") -> dict:
    events = result.get_asset_materialization_events()
    materialization = [e for e in events if key in e.asset_key.to_user_string()][-1].materialization
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def test_prediction_log_partition_is_versioned_by_content(settings):
    write_log(settings, log_records(production_window(48, seed=1, scenario="baseline")),
              extra_lines=('{"request_id": "cut', ))
    first = _materialize([prediction_log], settings, partition_key="2026-05-01")
    metadata = _metadata(first)
    assert (metadata["rows"], metadata["bad_lines"], metadata["labelled"]) == (48, 1, 0)
    version = first.asset_materializations_for_node("prediction_log")[0].tags["dagster/data_version"]
    frame = pd.read_parquet(metadata["path"])
    assert len(frame) == 48 and version in metadata["path"]

    write_labels(settings, {"r0": 1, "r1": 0})
    second = _materialize([prediction_log], settings, partition_key="2026-05-01")
    assert _metadata(second)["labelled"] == 2
    assert second.asset_materializations_for_node("prediction_log")[0].tags["dagster/data_version"] != version
    assert len(list((settings.home / "prediction_log" / "date=2026-05-01").glob("*.parquet"))) == 2


def _labelled_traffic(settings, n=400, model_version="1"):
    frame = production_window(n, seed=21, scenario="baseline")
    records = log_records(frame, model_version=model_version)
    write_log(settings, records)
    write_labels(settings, {r["request_id"]: int(y) for r, y in zip(records, frame["churned"])})


def _check(result):
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def test_model_performance_reports_metrics_and_passes_near_the_reference(settings, monkeypatch):
    _labelled_traffic(settings)
    monkeypatch.setattr(monitoring_assets, "champion_reference",
                        lambda s: {"model_version": "1", "accuracy": 0.70, "roc_auc": 0.80})
    result = _materialize([model_performance], settings, {"model_performance": {"config": {"window_end": END}}})
    metadata = _metadata(result)
    assert metadata["status"] == "ok" and metadata["labelled"] == 400
    assert 0.5 < metadata["roc_auc"] <= 1 and 0 < metadata["brier"] < 0.25
    assert metadata["reference_model_version"] == "1" and metadata["decayed"] is False
    assert "| 1 |" in metadata["by_model_version"] and "observed_rate" in metadata["calibration"]
    assert "stable (v" in metadata["by_revision"]
    assert _check(result).passed is True
    gauges = read_loop_gauges(settings)
    assert gauges["accuracy"] == pytest.approx(metadata["accuracy"])


def test_model_performance_check_fails_on_decay(settings, monkeypatch):
    _labelled_traffic(settings)
    monkeypatch.setattr(monitoring_assets, "champion_reference", lambda s: None)
    config = {"window_end": END, "reference_roc_auc": 0.99, "reference_accuracy": 0.99,
              "max_roc_auc_drop": 0.05}
    result = _materialize([model_performance], settings, {"model_performance": {"config": config}})
    metadata = _metadata(result)
    assert metadata["decayed"] is True and metadata["decay_status"] == "decayed"
    assert metadata["roc_auc_drop"] == pytest.approx(0.99 - metadata["roc_auc"])
    check = _check(result)
    assert check.passed is False and "decayed" in check.description


def test_too_few_labels_is_reported_and_not_judged(settings, monkeypatch):
    _labelled_traffic(settings, n=30)
    monkeypatch.setattr(monitoring_assets, "champion_reference",
                        lambda s: {"model_version": "1", "accuracy": 0.99, "roc_auc": 0.99})
    result = _materialize([model_performance], settings, {"model_performance": {"config": {"window_end": END}}})
    metadata = _metadata(result)
    assert metadata["status"] == "insufficient_labels" and "accuracy" not in metadata
    assert metadata["decay_status"] == "insufficient_labels" and metadata["decayed"] is False
    assert _check(result).passed is True


def test_champion_traffic_only_is_judged(settings, monkeypatch):
    _labelled_traffic(settings, model_version="1")
    monkeypatch.setattr(monitoring_assets, "champion_reference",
                        lambda s: {"model_version": "2", "accuracy": 0.99, "roc_auc": 0.99})
    result = _materialize([model_performance], settings, {"model_performance": {"config": {"window_end": END}}})
    assert _metadata(result)["decay_status"] == "insufficient_labels"  # no traffic of version 2 yet


def test_champion_reference_without_an_mlflow_store_is_none(settings):
    assert monitoring_assets.champion_reference(settings) is None
    assert not settings.mlflow_dir.exists()  # looking did not create a database


def _drift_run(settings, reference, scenario, n, **config):
    write_log(settings, log_records(production_window(n, seed=31, scenario=scenario)))

    @dg.asset(name="training_set")
    def training_set_stub() -> pd.DataFrame:
        return reference

    config = {"window_end": END, **config}
    return _materialize([training_set_stub, drift_report], settings, {"drift_report": {"config": config}})


def test_drift_report_on_price_rise_traffic(settings, reference):
    result = _drift_run(settings, reference, "price_rise", 600)
    metadata = _metadata(result, "drift_report")
    assert metadata["status"] == "ok" and metadata["method"] == "evidently"
    assert metadata["drifted_columns"] == ["monthly_charges", "total_charges", "support_calls"]
    assert metadata["drift_share"] == pytest.approx(3 / 9)
    assert metadata["column_scores"]["monthly_charges"]["drifted"] is True
    assert "prediction drift skipped" in metadata["notes"]
    assert metadata["report"].endswith(".html") and "<!DOCTYPE html>" in open(metadata["report"]).read()
    assert read_loop_gauges(settings)["drift_share"] == pytest.approx(3 / 9)


def test_drift_report_compares_scores_when_the_champion_can_score_the_reference(settings, reference, monkeypatch):
    from .traffic import churn_score

    monkeypatch.setattr(drift_assets, "champion_scores",
                        lambda s, ref, features: pd.Series(churn_score(ref), index=ref.index))
    result = _drift_run(settings, reference, "baseline", 600, fast_path_min_rows=500)
    metadata = _metadata(result, "drift_report")
    assert metadata["method"] == "fast" and metadata["drifted_columns"] == []
    assert metadata["column_scores"]["score"]["drifted"] is False and metadata["columns_compared"] == 10
    assert "per-column tests" in open(metadata["report"]).read()


def test_drift_report_with_too_little_traffic(settings, reference):
    result = _drift_run(settings, reference, "price_rise", 40)
    metadata = _metadata(result, "drift_report")
    assert metadata["status"] == "insufficient_data" and "drift_share" not in metadata
    assert "40 rows in the window" in metadata["notes"]
    assert "drift_share" not in read_loop_gauges(settings)


def test_drift_report_names_reference_gaps(settings, reference):
    result = _drift_run(settings, reference.drop(columns=["contract"]), "baseline", 600)
    metadata = _metadata(result, "drift_report")
    assert metadata["missing_in_reference"] == ["contract"] and metadata["missing_in_reference_count"] == 1
    assert metadata["columns_compared"] == 8 and metadata["drifted_columns"] == []
