"""The deploy step's Kubernetes Job as dagster-k8s builds it, for the tests: the executor config
Dagster resolves for a run of the deploy job, turned into the Job by dagster-k8s' own constructor."""

from __future__ import annotations

import dagster as dg

from mlops_assets.deployment.job import DEPLOY_EXECUTOR_NAME, deploy_executor
from mlops_assets.settings import Settings


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
