"""The k8s profile's definitions: every resource resolved from the environment of a code-location
pod (a subprocess, so module-level settings resolve as in production), a load-time failure naming
each missing setting, and the deploy job on ``k8s_job_executor`` configured from settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest

from mlops_assets.deployment import job as deploy
from tests.deploy.step_job import deploy_step_job, resolved_executor_config
from mlops_assets.settings import PROJECT_ROOT, K8S_REQUIRED, SettingsError, get_settings

from .conftest import CODE_IMAGE, SERVING_IMAGE, k8s_env

PROBE = """
import json
from mlops_assets.definitions import defs

res = defs.resources
io, settings, registry, versioner = res["io_manager"], res["settings"], res["registry"], res["versioner"]
jobs = {job.name: job for job in defs.resolve_all_job_defs()}  # resolves every job against the resources
deploy = jobs["churn_deploy_job"]
print(json.dumps({
    "io_manager": [type(io).__name__, io.s3_bucket, io.s3_prefix, io.s3_endpoint_url],
    "dvc_remote": versioner.remote,
    "tracking_uri": registry.settings.mlflow_tracking_uri,
    "artifact_root": registry.settings.mlflow_artifact_root,
    "feast_offline": settings.feast_offline_path,
    "namespace": settings.k8s_namespace, "images": [settings.code_image, settings.serving_image],
    "serving": type(res["serving"]).__name__, "k8s_api": settings.k8s_api_url,
    "deploy_mode": settings.deploy_mode, "ready_timeout_s": settings.ready_timeout_s,
    "deploy_job": {"executor": deploy.executor_def.name,
                   "assets": sorted(k.to_user_string() for k in deploy.asset_layer.executable_asset_keys)},
    "jobs": sorted(jobs),
    "retrain_assets": sorted(k.to_user_string() for k in jobs["churn_retrain_job"].asset_layer.executable_asset_keys),
    "sensors": sorted(f"{s.name} -> {s.job_name}" for s in defs.sensors),
}))
"""


def load_definitions(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``import mlops_assets.definitions`` in a fresh interpreter with exactly ``env`` for settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "AWS_"))}
    return subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_k8s_definitions_load_with_every_resource_resolved_from_the_environment(tmp_path):
    env = k8s_env(tmp_path / "home", "churn-data", MLOPS_S3_ENDPOINT_URL="http://minio.storage:9000",
                  MLOPS_K8S_API="https://10.0.0.1:443", MLOPS_READY_TIMEOUT_S="300")
    loaded = load_definitions(env)
    assert loaded.returncode == 0, loaded.stderr
    probe = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert probe["io_manager"] == ["RunScopedIOManager", "churn-data", "dagster-io", "http://minio.storage:9000"]
    assert probe["dvc_remote"] == "s3://churn-data/dvc"
    assert probe["tracking_uri"] == "http://mlflow.mlops.svc:5000"
    assert probe["artifact_root"] == "s3://churn-data/mlflow"
    assert probe["feast_offline"] == "s3://churn-data/feast/churn_features.parquet"
    assert probe["namespace"] == "ml-prod" and probe["serving"] == "KServeBackend"
    assert probe["images"] == [CODE_IMAGE, SERVING_IMAGE]
    assert (probe["k8s_api"], probe["deploy_mode"], probe["ready_timeout_s"]) == ("https://10.0.0.1:443", "apply", 300.0)
    assert probe["deploy_job"] == {"executor": deploy.DEPLOY_EXECUTOR_NAME, "assets": ["churn/inference_service"]}
    assert "churn_deploy_job" in probe["jobs"] and "churn_retrain_job" in probe["jobs"]
    # the rollout leaves the retrain run: a sensor starts the deploy job for each new champion
    assert "churn/inference_service" not in probe["retrain_assets"] and "churn/champion_model" in probe["retrain_assets"]
    assert "churn_deploy_new_champion -> churn_deploy_job" in probe["sensors"]


@pytest.mark.integration
def test_k8s_definitions_fail_at_load_time_naming_every_missing_setting(tmp_path):
    loaded = load_definitions({"MLOPS_PROFILE": "k8s", "MLOPS_HOME": str(tmp_path / "home")})
    assert loaded.returncode != 0
    last = loaded.stderr.strip().splitlines()[-1]
    assert last.startswith("mlops_assets.settings.SettingsError: the k8s profile needs these settings: ")
    for name in K8S_REQUIRED:
        assert name in last

    partial = k8s_env(tmp_path / "home")
    del partial["MLOPS_S3_BUCKET"]
    loaded = load_definitions(partial)
    last = loaded.stderr.strip().splitlines()[-1]
    assert loaded.returncode != 0 and "MLOPS_S3_BUCKET (bucket for DVC data" in last
    assert not any(name in last for name in K8S_REQUIRED if name != "MLOPS_S3_BUCKET")


@pytest.mark.integration
def test_dagster_reports_the_missing_setting_when_it_loads_the_location(tmp_path):
    """What an operator sees: ``dagster definitions validate`` (the same load the code server does)."""
    dagster = [str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
               "-m", "mlops_assets.definitions"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "AWS_"))}
    env = k8s_env(tmp_path / "home")
    ok = subprocess.run(dagster, env={**base, **env}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    del env["MLOPS_SERVING_IMAGE"]
    failed = subprocess.run(dagster, env={**base, **env}, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode != 0
    output = re.sub(r"\x1b\[[0-9;]*m", "", failed.stdout + failed.stderr)  # the log is coloured
    assert "Validation failed for code location mlops_assets.definitions" in output
    assert ("mlops_assets.settings.SettingsError: the k8s profile needs these settings: MLOPS_SERVING_IMAGE "
            "(container image of the serving classes (predictor, transformer, prediction-log sink))\n") in output


@pytest.mark.parametrize("env, message", [
    ({"MLOPS_DEPLOY_MODE": "gitops"}, "MLOPS_GITOPS_PATH (release file"),
    ({"MLOPS_DEPLOY_MODE": "gitops"}, "MLOPS_ARGOCD_APP (the Argo CD Application"),
    ({"MLOPS_DEPLOY_MODE": "kubectl"}, "MLOPS_DEPLOY_MODE='kubectl' is not one of apply, gitops"),
    ({"MLOPS_READY_TIMEOUT_S": "soon"}, "MLOPS_READY_TIMEOUT_S='soon' is not a number"),
    ({"MLOPS_READY_TIMEOUT_S": "0"}, "MLOPS_READY_TIMEOUT_S='0' must be a number of seconds greater than 0"),
])
def test_deploy_settings_are_checked_when_settings_resolve(tmp_path, env, message):
    with pytest.raises(SettingsError) as error:
        get_settings(k8s_env(tmp_path, **env))
    assert message in str(error.value)


def test_deploy_settings_default_to_the_in_cluster_api(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    settings = get_settings(k8s_env(tmp_path, MLOPS_S3_ENDPOINT_URL="http://s3.local:9000"))
    assert settings.k8s_api_url is None  # the pod's service account, else a kubeconfig
    assert settings.k8s_token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert settings.k8s_ca_file == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert (settings.deploy_mode, settings.gitops_path, settings.ready_timeout_s) == ("apply", None, 600.0)
    # what child processes (and MLflow in-process) need to reach the same S3 endpoint
    assert settings.s3_client_env() == {"MLFLOW_S3_ENDPOINT_URL": "http://s3.local:9000",
                                        "AWS_ENDPOINT_URL_S3": "http://s3.local:9000"}
    assert settings.env_for_subprocess()["MLFLOW_S3_ENDPOINT_URL"] == "http://s3.local:9000"
    gitops = get_settings(k8s_env(tmp_path, MLOPS_DEPLOY_MODE="gitops", MLOPS_GITOPS_PATH=str(tmp_path / "r.yaml"),
                                  MLOPS_ARGOCD_APP="churn-prod"))
    assert (gitops.gitops_path, gitops.argocd_app, gitops.argocd_namespace) == (tmp_path / "r.yaml", "churn-prod", "argocd")


def test_deploy_job_runs_on_k8s_job_executor_with_image_service_account_namespace_resources(tmp_path):
    from dagster_k8s import k8s_job_executor

    from mlops_assets.definitions import build_definitions

    settings = get_settings(k8s_env(tmp_path))
    job = build_definitions(settings).resolve_job_def("churn_deploy_job")
    assert job.executor_def.name == deploy.DEPLOY_EXECUTOR_NAME
    assert job.executor_def.executor_creation_fn is k8s_job_executor.executor_creation_fn
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"churn/inference_service"}
    assert [c.name for c in job.asset_layer.asset_graph.asset_check_keys] == ["serving_healthy"]

    # the executor config Dagster resolves for a run of this job is the one the step's Job is built from
    execution = dg.validate_run_config(job)["execution"]
    assert execution == {deploy.DEPLOY_EXECUTOR_NAME: resolved_executor_config(settings)}
    config = execution[deploy.DEPLOY_EXECUTOR_NAME]
    assert config["job_image"] == CODE_IMAGE
    assert config["job_namespace"] == "ml-prod"
    assert config["service_account_name"] == "deployer-sa"
    assert config["resources"] == deploy.DEPLOY_STEP_RESOURCES

    manifest = deploy_step_job(settings, run_id="run-1", step_key="inference_service")
    kubernetes_validate.validate(manifest, "1.32.0", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["namespace"] == "ml-prod" and pod["serviceAccountName"] == "deployer-sa"
    assert pod["containers"][0]["image"] == CODE_IMAGE
    assert pod["containers"][0]["resources"] == deploy.DEPLOY_STEP_RESOURCES


def test_local_profile_has_no_deploy_job_and_rolls_out_in_the_retrain_run():
    from mlops_assets.automation import build_automation, retrain_assets

    automation = build_automation(get_settings({}))
    assert sorted(j.name for j in automation.jobs) == ["churn_drift_check_job", "churn_online_features_job",
                                                       "churn_retrain_job"]
    assert "churn_deploy_new_champion" not in {s.name for s in automation.sensors}
    assert "inference_service" in retrain_assets(get_settings({}))


def test_definitions_follow_the_settings_given_not_the_environment(tmp_path, monkeypatch):
    """build_definitions(settings) builds jobs, sensors and schedules from its argument."""
    from mlops_assets.definitions import build_definitions

    monkeypatch.setenv("MLOPS_PROFILE", "local")
    defs = build_definitions(get_settings(k8s_env(tmp_path, MLOPS_DRIFT_THRESHOLD="0.45")))
    assert "churn_deploy_job" in {j.name for j in defs.resolve_all_job_defs()}
    sensors = {s.name: s for s in defs.sensors}
    assert "0.45" in sensors["churn_drift_sensor"].description
    assert sensors["churn_drift_sensor"].default_status == dg.DefaultSensorStatus.STOPPED  # k8s: an operator starts it


def test_a_new_champion_starts_the_deploy_job_once(tmp_path):
    settings = get_settings(k8s_env(tmp_path / "home"))
    sensor = deploy.deploy_on_new_champion(deploy.deploy_job(settings), "churn")
    assert sensor.job_name == "churn_deploy_job"
    with dg.DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(["churn", "champion_model"], metadata={"champion_version": "7"}))
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        [request] = first.run_requests
        assert {k: v for k, v in request.tags.items() if k.startswith("mlops/")} == {
            "mlops/trigger": "new_champion", "mlops/champion_version": "7", "mlops/model": "churn"}
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert again.run_requests == []
