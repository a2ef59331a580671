"""The deploy step as its own Kubernetes Job (``k8s``): ``deploy_job`` runs ``inference_service`` on
``dagster_k8s.k8s_job_executor`` with the code-location image, and a sensor starts it for every new
champion (tests/deploy/step_job.py builds the Job manifest dagster-k8s launches for the step).
"""

from __future__ import annotations

import copy

import dagster as dg

from mlops_assets.naming import MODEL_TAG, job_name, model_key
from mlops_assets.settings import Settings, SettingsError

# The deploy step only talks to the API server and runs smoke requests: a small, fixed footprint.
DEPLOY_STEP_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


def deploy_executor_config(settings: Settings) -> dict:
    """``k8s_job_executor`` config for the deploy job: image, namespace, service account, resources."""
    if not settings.code_image:
        raise SettingsError("MLOPS_CODE_IMAGE is not set: the deploy step's Kubernetes Job runs the code-location image")
    return {
        "job_image": settings.code_image,
        "job_namespace": settings.k8s_namespace,
        "service_account_name": settings.service_account,
        "resources": copy.deepcopy(DEPLOY_STEP_RESOURCES),
        "env_vars": ["MLOPS_PROFILE=k8s", f"MLOPS_K8S_NAMESPACE={settings.k8s_namespace}"],
        "env_config_maps": ["mlops-settings"],
        "labels": {"app.kubernetes.io/part-of": "mlops-assets"},
    }


DEPLOY_EXECUTOR_NAME = "k8s_deploy_executor"


def deploy_executor(settings: Settings):
    """``dagster_k8s.k8s_job_executor`` configured from settings, for the job holding the deploy step."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(deploy_executor_config(settings), name=DEPLOY_EXECUTOR_NAME)


DEPLOY_JOB_NAME = "deploy_job"


def deploy_job(settings: Settings):
    """The job that rolls the champion out: ``inference_service`` (and its check), each step a Kubernetes Job."""
    model = settings.model_name
    return dg.define_asset_job(job_name(model, DEPLOY_JOB_NAME),
                               selection=dg.AssetSelection.assets(model_key(model, "inference_service")),
                               tags={MODEL_TAG: model},
                               executor_def=deploy_executor(settings),
                               description="Canary rollout of @champion as the KServe InferenceService; "
                                           "the step runs as its own Kubernetes Job (k8s_job_executor).")


def deploy_on_new_champion(job, model: str):
    """Each new ``<model>/champion_model`` materialization (a passed gate) starts ``job``, once."""
    @dg.asset_sensor(asset_key=model_key(model, "champion_model"), job=job, name=job_name(model, "deploy_new_champion"),
                     default_status=dg.DefaultSensorStatus.RUNNING,
                     description="Roll out every new @champion with the deploy job (k8s_job_executor).")
    def deploy_new_champion(context, asset_event):  # no annotations: this module defers them
        version = asset_event.asset_materialization.metadata.get("champion_version")
        version = getattr(version, "value", version)
        return dg.RunRequest(run_key=f"champion-{version}-{asset_event.timestamp}",
                             tags={"mlops/trigger": "new_champion", MODEL_TAG: model, "mlops/champion_version": str(version)})

    return deploy_new_champion
