"""The Kubernetes Job dagster-k8s builds for the deploy step runs the code-location image, as settings say."""

from __future__ import annotations

import kubernetes_validate
import pytest

from mlops_assets.deployment import job as deploy
from tests.deploy.step_job import deploy_step_job, resolved_executor_config
from mlops_assets.settings import SettingsError, get_settings

K8S_ENV = {"MLOPS_PROFILE": "k8s", "MLOPS_S3_BUCKET": "bucket", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "MLOPS_K8S_NAMESPACE": "ml-prod", "MLOPS_CODE_IMAGE": "registry.example/mlops-code:1.2.3",
           "MLOPS_SERVING_IMAGE": "registry.example/mlops-serving:1.2.3", "MLOPS_K8S_SERVICE_ACCOUNT": "deployer-sa"}


def test_deploy_step_job_runs_the_code_image_with_service_account_namespace_and_resources():
    settings = get_settings(K8S_ENV)
    job = deploy_step_job(settings, run_id="0f1e2d3c-run", step_key="inference_service",
                                 args=["dagster", "api", "execute_step", "--run-id", "0f1e2d3c-run"])
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "ml-prod"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/mlops-code:1.2.3"  # not the serving image
    # dagster-k8s starts the step with args only: the code image must not have an ENTRYPOINT that eats them
    assert "command" not in container and container["args"][:3] == ["dagster", "api", "execute_step"]
    assert pod["serviceAccountName"] == "deployer-sa"
    assert container["resources"] == deploy.DEPLOY_STEP_RESOURCES
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLOPS_PROFILE"] == "k8s" and env["MLOPS_K8S_NAMESPACE"] == "ml-prod"
    assert job["metadata"]["labels"]["dagster/op"] == "inference_service"


def test_executor_config_is_accepted_by_k8s_job_executor_schema():
    resolved = resolved_executor_config(get_settings(K8S_ENV))
    assert resolved["job_image"] == "registry.example/mlops-code:1.2.3"
    assert resolved["job_namespace"] == "ml-prod"
    assert resolved["service_account_name"] == "deployer-sa"
    assert resolved["resources"] == deploy.DEPLOY_STEP_RESOURCES


def test_executor_needs_the_code_image():
    with pytest.raises(SettingsError, match="MLOPS_CODE_IMAGE"):
        deploy.deploy_executor_config(get_settings({}))
