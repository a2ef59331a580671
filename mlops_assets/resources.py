"""Resources by profile: one builder, fields that depend on the settings (no per-profile copies)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.data.versioning import DataVersioner
from mlops_assets.deployment.backend import ServingBackend
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.io_manager import RunScopedIOManager
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.settings import Settings


def io_manager(settings: Settings) -> RunScopedIOManager:
    """Asset outputs per run (overlapping runs never read each other's), on S3 in ``k8s``."""
    if settings.profile == "k8s":
        return RunScopedIOManager(s3_bucket=settings.s3_bucket, s3_prefix="dagster-io",
                                  s3_endpoint_url=settings.s3_endpoint_url)
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


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "settings": settings,
        "versioner": DataVersioner(settings),
        "features": FeatureStoreClient(settings),
        "registry": ModelRegistry(settings),
        "serving": serving_backend(settings),
        "io_manager": io_manager(settings),
    }
