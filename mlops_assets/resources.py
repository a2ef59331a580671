"""Resources by profile: one builder, fields that depend on the settings (no per-profile copies)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.data.versioning import DataVersioner
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.settings import Settings


def io_manager(settings: Settings):
    if settings.profile == "k8s":
        from dagster_aws.s3 import S3PickleIOManager, S3Resource

        return S3PickleIOManager(s3_resource=S3Resource(endpoint_url=settings.s3_endpoint_url),
                                 s3_bucket=settings.s3_bucket, s3_prefix="dagster-io")
    return dg.FilesystemIOManager(base_dir=str(settings.io_manager_dir))


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "settings": settings,
        "versioner": DataVersioner(settings),
        "features": FeatureStoreClient(settings),
        "registry": ModelRegistry(settings),
        "io_manager": io_manager(settings),
    }
