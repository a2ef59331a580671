"""Resources by profile: one builder, fields that depend on the settings (no per-profile copies)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.data.git_remote import GitRemoteVersioner
from mlops_assets.data.versioning import DataVersioner
from mlops_assets.deployment.backend import ServingBackend
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.io_manager import RunScopedIOManager
from mlops_assets.monitoring.stores import LocalMonitoring, StackMonitoring
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


def settings_resource(settings: Settings):
    """The settings; in `stack` as a resource that first checks every shared service, so a run whose
    services are down fails when it starts, naming each service and its URL (before any step)."""
    if settings.profile != "stack":
        return settings

    @dg.resource(description="the stack profile's settings, once every shared service answered")
    def checked_settings(_) -> Settings:
        from mlops_assets.stack.health import require_services

        require_services(settings)
        return settings

    return checked_settings


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "settings": settings_resource(settings),
        "versioner": versioner(settings),
        "monitoring": monitoring(settings),
        "features": FeatureStoreClient(settings),
        "registry": ModelRegistry(settings),
        "serving": serving_backend(settings),
        "io_manager": io_manager(settings),
    }
