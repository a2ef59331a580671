"""Resources by profile: one builder, fields that depend on the settings (no per-profile copies)."""

from __future__ import annotations

from typing import Any, Sequence

import dagster as dg

from mlops_assets.data.git_remote import GitRemoteVersioner
from mlops_assets.data.versioning import DataVersioner
from mlops_assets.deployment.backend import ServingBackend
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.io_manager import RunScopedIOManager
from mlops_assets.monitoring.stores import LocalMonitoring, StackMonitoring
from mlops_assets.naming import run_model
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.settings import Settings


def io_manager(settings: Settings) -> RunScopedIOManager:
    """Asset outputs per run (overlapping runs never read each other's); on S3 when runs are stateless
    (``stack``, ``k8s``)."""
    if settings.stateless:
        return RunScopedIOManager(s3_bucket=settings.s3_bucket, s3_prefix="dagster-io",
                                  s3_endpoint_url=settings.s3_endpoint_url,
                                  aws_access_key_id=settings.extra.get("AWS_ACCESS_KEY_ID"),
                                  aws_secret_access_key=settings.extra.get("AWS_SECRET_ACCESS_KEY"))
    return RunScopedIOManager(base_dir=str(settings.io_manager_dir))


def serving_backend(settings: Settings) -> ServingBackend:
    """Where the champion is served, chosen once: the one place a profile picks its serving backend."""
    if settings.profile == "k8s":
        if settings.deploy_mode == "gitops":
            from mlops_assets.deployment.gitops import GitOpsBackend

            return GitOpsBackend(settings)
        from mlops_assets.deployment.kserve import KServeBackend

        return KServeBackend(settings)
    from mlops_assets.deployment.local import LocalBackend

    return LocalBackend(settings)


def versioner(settings: Settings) -> DataVersioner:
    """DVC metadata on a git server when one is configured (stack), else a workspace on disk."""
    return GitRemoteVersioner(settings) if settings.data_git_url else DataVersioner(settings)


def monitoring(settings: Settings) -> LocalMonitoring:
    """Prediction log, labels, reports and gauges: the sink + S3 + Pushgateway when a sink is set."""
    return StackMonitoring(settings) if settings.sink_url else LocalMonitoring(settings)


def model_resources(settings: Settings) -> dict[str, Any]:
    """One model's resources (its dataset, registered model, feature store, serving)."""
    return {
        "settings": settings,
        "versioner": versioner(settings),
        "monitoring": monitoring(settings),
        "features": FeatureStoreClient(settings),
        "registry": ModelRegistry(settings),
        "serving": serving_backend(settings),
    }


def settings_resource(settings: Settings):
    """The settings; in `stack` as a resource that first checks every shared service."""
    if settings.profile != "stack":
        return settings

    @dg.resource(description="the stack profile's settings, once every shared service answered")
    def checked_settings(_) -> Settings:
        _check_services(settings)
        return settings

    return checked_settings


def _check_services(settings: Settings) -> None:
    """In `stack` a run whose shared services are down fails when it starts (before any step),
    naming each service and its URL."""
    if settings.profile == "stack":
        from mlops_assets.stack.health import require_services

        require_services(settings)


def _per_run_model(key: str, models: dict[str, Settings], cache: dict[str, dict]) -> dg.ResourceDefinition:
    @dg.resource(description=f"the {key} of the run's model ({', '.join(models)}), chosen when the run starts")
    def for_run_model(init_context):
        name = run_model(init_context.dagster_run, models)
        if name not in cache:
            cache[name] = model_resources(models[name])
        if key == "settings":
            _check_services(models[name])
        return cache[name][key]

    return for_run_model


def build_resources(settings: Settings | Sequence[Settings]) -> dict[str, Any]:
    """Resources for one model's settings, or, for several models, one resource per key whose value
    is the run's model's (each model's objects built once per process)."""
    models = [settings] if isinstance(settings, Settings) else list(settings)
    if len(models) == 1:
        return {**model_resources(models[0]), "settings": settings_resource(models[0]), "io_manager": io_manager(models[0])}
    by_name, cache = {model.model_name: model for model in models}, {}
    keys = ("settings", "versioner", "monitoring", "features", "registry", "serving")
    return {**{key: _per_run_model(key, by_name, cache) for key in keys}, "io_manager": io_manager(models[0])}
