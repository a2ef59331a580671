"""The deploy step as its own Kubernetes Job (``k8s``): ``deploy_job`` runs ``inference_service`` on
``dagster_k8s.k8s_job_executor`` with the code-location image, and a sensor starts it for every new
champion. :func:`deploy_step_job` builds the Job manifest dagster-k8s would launch, for tests and review.
"""

from __future__ import annotations

import copy

import dagster as dg

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
    return dg.define_asset_job(DEPLOY_JOB_NAME, selection=dg.AssetSelection.assets("inference_service"),
                               executor_def=deploy_executor(settings),
                               description="Canary rollout of @champion as the KServe InferenceService; "
                                           "the step runs as its own Kubernetes Job (k8s_job_executor).")


def deploy_on_new_champion(job):
    """Each new ``champion_model`` materialization (a passed gate) starts ``job``, once."""
    @dg.asset_sensor(asset_key=dg.AssetKey("champion_model"), job=job, name="deploy_new_champion",
                     default_status=dg.DefaultSensorStatus.RUNNING,
                     description="Roll out every new @champion with the deploy job (k8s_job_executor).")
    def deploy_new_champion(context, asset_event):  # no annotations: this module defers them
        version = asset_event.asset_materialization.metadata.get("champion_version")
        version = getattr(version, "value", version)
        return dg.RunRequest(run_key=f"champion-{version}-{asset_event.timestamp}",
                             tags={"mlops/trigger": "new_champion", "mlops/champion_version": str(version)})

    return deploy_new_champion


def resolved_executor_config(settings: Settings) -> dict:
    """The executor config as Dagster validates and fills it in for a run (defaults included)."""
    @dg.op(name="inference_service")
    def deploy_step():
        pass

    @dg.job(name="deploy_executor_probe", executor_def=deploy_executor(settings))
    def probe():
        deploy_step()

    return dg.validate_run_config(probe)["execution"][DEPLOY_EXECUTOR_NAME]


def deploy_step_job(settings: Settings, run_id: str, step_key: str, args: list[str] | None = None) -> dict:
    """The Job manifest dagster-k8s launches for one deploy step, built by its own constructor.

    The resolved executor config maps to a ``K8sContainerContext`` field by field as
    ``k8s_job_executor`` does; ``construct_dagster_k8s_job`` then builds the Job.
    """
    import kubernetes
    from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import get_k8s_job_name

    config = resolved_executor_config(settings)
    context = K8sContainerContext(
        image_pull_policy=config.get("image_pull_policy"),
        service_account_name=config.get("service_account_name"),
        env_config_maps=config.get("env_config_maps"),
        env_secrets=config.get("env_secrets"),
        env_vars=config.get("env_vars"),
        volume_mounts=config.get("volume_mounts"),
        volumes=config.get("volumes"),
        labels=config.get("labels"),
        namespace=config.get("job_namespace"),
        resources=config.get("resources"),
    )
    job_name = f"dagster-step-{get_k8s_job_name(run_id, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image=config["job_image"],
                                       dagster_home="/opt/dagster/dagster_home"),
        args=args or ["dagster", "api", "execute_step"],
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": step_key, "dagster/run-id": run_id},
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    manifest["metadata"]["namespace"] = context.namespace  # the executor creates the Job there
    return manifest
