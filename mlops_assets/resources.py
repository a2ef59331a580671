"""Resources by profile: one builder, fields that depend on the settings (no per-profile copies)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.data.git_remote import GitRemoteVersioner
from mlops_assets.data.versioning import DataVersioner
from mlops_assets.monitoring.stores import LocalMonitoring, StackMonitoring
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.settings import Settings


def io_manager(settings: Settings):
    if settings.stateless:
        from dagster_aws.s3 import S3PickleIOManager, S3Resource

        credentials = {"aws_access_key_id": settings.extra.get("AWS_ACCESS_KEY_ID"),
                       "aws_secret_access_key": settings.extra.get("AWS_SECRET_ACCESS_KEY")}
        return S3PickleIOManager(s3_resource=S3Resource(endpoint_url=settings.s3_endpoint_url, **credentials),
                                 s3_bucket=settings.s3_bucket, s3_prefix="dagster-io")
    return dg.FilesystemIOManager(base_dir=str(settings.io_manager_dir))


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
        "io_manager": io_manager(settings),
    }
