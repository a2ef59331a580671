"""Two models in one code location (examples/models: churn + tumor), materialized and served, then
drift in one with the real Dagster daemon: only that model retrains; the other keeps its champion
and its traffic (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timezone

import dagster as dg
import httpx
import pytest

from mlops_assets.data.packaged import breast_cancer
from mlops_assets.definitions import build_definitions
from mlops_assets.loop import BUILD_SELECTION, Daemon, materialize, open_instance, wait_for_triggered_run, window_config
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.serving.backend_local import LocalServingBackend
from mlops_assets.settings import PROJECT_ROOT, get_settings

pytestmark = pytest.mark.integration

MODELS_DIR = str(PROJECT_ROOT / "examples" / "models")
SHIFTED = ("mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness", "mean_compactness",
           "mean_concavity", "worst_radius", "worst_texture")  # 9 of the 12 features: share 0.75 > 0.5


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    home = tmp_path_factory.mktemp("two-models")
    base = get_settings({"MLOPS_HOME": str(home), "MLOPS_MODELS_DIR": MODELS_DIR})
    base.ensure_dirs()
    settings = {model.name: base.for_model(model) for model in base.catalog().models}
    defs, instance = build_definitions(base), open_instance(base)
    try:
        for name, config in (("churn", {"ops": {"dataset": {"config": {"rows": 3000}}}}), ("tumor", {})):
            result = materialize(defs, instance, BUILD_SELECTION, config, model=name)
            assert result.success, f"{name}: the first materialization failed"
        yield settings, defs, instance
    finally:
        for one in settings.values():
            LocalServingBackend(one).stop()


def predict(settings, rows: list[dict]) -> list[dict]:
    endpoint = LocalServingBackend(settings).endpoint
    with httpx.Client(timeout=10.0) as client:
        answers = [client.post(f"{endpoint}/v1/models/{settings.model_name}:predict", json={"instances": [row]})
                   for row in rows]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    return [a.json() for a in answers]


def tumor_rows(shift: float) -> list[dict]:
    spec = get_settings({"MLOPS_MODELS_DIR": MODELS_DIR, "MLOPS_MODEL_NAME": "tumor"}).dataset_spec()
    frame = breast_cancer()
    frame[list(SHIFTED)] *= shift
    return frame[[spec.entity, *spec.features]].sample(300, random_state=1).to_dict("records")


def test_each_model_serves_its_own_champion_on_its_own_route(two_models):
    settings, _, _ = two_models
    tumor = predict(settings["tumor"], tumor_rows(1.0)[:3])
    churn = predict(settings["churn"], [{"customer_id": 1}])
    assert {a["model_name"] for a in tumor} == {"tumor"} and churn[0]["model_name"] == "churn"
    for name in ("churn", "tumor"):
        assert ModelRegistry(settings[name]).version_of("champion") == "1"


def test_one_ingress_routes_every_model(two_models):
    settings, _, _ = two_models
    churn, tumor = (LocalServingBackend(settings[name]).status() for name in ("churn", "tumor"))
    assert churn["endpoint"] == tumor["endpoint"] and churn["ingress"]["pid"] == tumor["ingress"]["pid"]
    endpoint = churn["endpoint"]
    assert httpx.get(f"{endpoint}/v1/models", timeout=5).json() == {"models": ["churn", "tumor"]}
    ready = httpx.get(f"{endpoint}/v2/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["models"] == {"churn": True, "tumor": True}
    assert httpx.get(f"{endpoint}/v2/models/tumor", timeout=10).json()["name"] == "tumor"
    # a path naming no served model: 404 naming the ones there are; churn's row sent to tumor is tumor's 4xx
    unknown = httpx.post(f"{endpoint}/v1/models/credit:predict", json={"instances": [{"customer_id": 1}]}, timeout=5)
    assert unknown.status_code == 404 and "churn, tumor" in unknown.json()["error"]
    wrong = httpx.post(f"{endpoint}/v1/models/tumor:predict", json={"instances": [{"customer_id": 1}]}, timeout=10)
    assert 400 <= wrong.status_code < 500 and "error" in wrong.json(), wrong.text
    # one scrape target for the ingress, the replicas of both models; both models' series on the ingress
    targets = json.loads(LocalServingBackend(settings["tumor"]).targets_path.read_text())
    assert [group["labels"]["role"] for group in targets].count("ingress") == 1
    assert {group["labels"].get("model_name") for group in targets if group["labels"]["role"] == "predictor"} == {
        "churn", "tumor"}
    metrics = httpx.get(f"{endpoint}/metrics", timeout=5).text
    for name in ("churn", "tumor"):
        assert f'mlops_canary_traffic_percent{{model_name="{name}"}} 0.0' in metrics
        assert f'mlops_ingress_requests_total{{code="200",model_name="{name}",revision="stable"}}' in metrics


def test_drift_in_one_model_retrains_only_that_model(two_models):
    settings, defs, instance = two_models
    churn_before = LocalServingBackend(settings["churn"]).status()
    since = datetime.now(timezone.utc)
    predict(settings["tumor"], tumor_rows(1.6))  # tumours measured on a drifted instrument
    report = materialize(defs, instance, ["drift_report"], {"ops": {"drift_report": {"config": window_config(since)}}},
                         model="tumor")
    assert report.success
    [event] = report.get_asset_materialization_events()
    assert event.asset_key == dg.AssetKey(["tumor", "drift_report"])
    assert event.step_materialization_data.materialization.metadata["drift_share"].value >= 0.5

    started = time.time() - 60
    with Daemon(settings["tumor"]):
        run = wait_for_triggered_run(instance, started, "tumor_retrain_job", timeout=600)
        time.sleep(20)  # more sensor ticks: nothing may start for churn
    assert run.tags["dagster/sensor_name"] == "tumor_drift_sensor" and run.tags["mlops/model"] == "tumor"
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert run.job_name == "tumor_retrain_job"
    assert instance.get_run_records(dg.RunsFilter(job_name="churn_retrain_job")) == []
    # tumor: a new champion (the spec's gate is non-inferiority), rolled out on tumor's endpoint
    assert ModelRegistry(settings["tumor"]).version_of("champion") == "2"
    tumor_status = LocalServingBackend(settings["tumor"]).status()
    assert str(tumor_status["revisions"]["stable"]["model_version"]) == "2"
    # churn: same champion, same revision and process, still answering
    assert ModelRegistry(settings["churn"]).version_of("champion") == "1"
    churn_after = LocalServingBackend(settings["churn"]).status()
    assert churn_after["revisions"]["stable"] == churn_before["revisions"]["stable"]
    assert predict(settings["churn"], [{"customer_id": 2}])[0]["model_version"] == "1"


def test_an_ingress_killed_with_kill_9_comes_back_serving_every_model(two_models):
    settings, _, _ = two_models
    backends = {name: LocalServingBackend(one) for name, one in settings.items()}
    before = {name: backend.status() for name, backend in backends.items()}
    versions = {name: str(state["revisions"]["stable"]["model_version"]) for name, state in before.items()}
    os.kill(before["churn"]["ingress"]["pid"], signal.SIGKILL)  # its serving processes die with it
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{before['churn']['endpoint']}/v1/models", timeout=5)
    # the next start of any one model starts an ingress that serves both again, on the same address
    backends["churn"].start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = {name: backend.status() for name, backend in backends.items()}
        if all((state["revisions"].get("stable") or {}).get("ready_replicas") for state in states.values()):
            break
        time.sleep(1)
    for name, state in states.items():
        assert state["ingress"]["pid"] != before[name]["ingress"]["pid"] and state["endpoint"] == before[name]["endpoint"]
        assert str(state["revisions"]["stable"]["model_version"]) == versions[name], (name, state["revisions"])
    assert predict(settings["churn"], [{"customer_id": 4}])[0]["model_version"] == versions["churn"]
    assert {a["model_version"] for a in predict(settings["tumor"], tumor_rows(1.0)[:3])} == {versions["tumor"]}


def test_stopping_one_model_leaves_the_other_serving(two_models):
    settings, _, _ = two_models
    ingress = LocalServingBackend(settings["churn"]).status()["ingress"]["pid"]
    LocalServingBackend(settings["tumor"]).stop()
    assert LocalServingBackend(settings["tumor"]).status()["running"] is False
    churn = LocalServingBackend(settings["churn"]).status()
    assert churn["running"] and churn["ingress"]["pid"] == ingress
    assert predict(settings["churn"], [{"customer_id": 3}])[0]["model_version"] == "1"
    gone = httpx.post(f"{churn['endpoint']}/v1/models/tumor:predict", json={"instances": tumor_rows(1.0)[:1]},
                      timeout=5)
    assert gone.status_code == 404 and "not served here (served: churn)" in gone.json()["error"]
