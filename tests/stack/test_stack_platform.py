"""The `stack` profile's resources: chosen once by the profile, and after the stack demo every piece
of state is found in its service (PostgreSQL, S3, MLflow over HTTP, Feast's SQL registry and Redis)."""

from __future__ import annotations

import boto3
import pytest

from mlops_assets.data.git_remote import GitRemoteVersioner
from mlops_assets.definitions import build_definitions
from mlops_assets.loop import open_instance
from mlops_assets.monitoring.stores import StackMonitoring
from mlops_assets.registry.client import ModelRegistry
from tests.stack.conftest import stack_settings

pytestmark = pytest.mark.integration


def s3_keys(stack, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=stack.url("s3"), aws_access_key_id="stack",
                          aws_secret_access_key="stack-secret", region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="mlops", Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_resources_are_chosen_by_the_profile(stack, tmp_path):
    from mlops_assets.io_manager import RunScopedIOManager

    resources = build_definitions(stack_settings(stack, tmp_path)).resources
    assert isinstance(resources["versioner"], GitRemoteVersioner)
    assert isinstance(resources["monitoring"], StackMonitoring)
    assert isinstance(resources["io_manager"], RunScopedIOManager) and resources["io_manager"].s3_bucket


def test_every_piece_of_state_is_in_a_service(stack, stack_demo):
    settings, result, summary, _ = stack_demo
    assert result.returncode == 0, result.stdout[-3000:]
    instance = open_instance(settings)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert instance.get_run_by_id(summary["after_drift"]["run_id"]) is not None
    # DVC data, the IO manager's outputs, the Feast offline table, the prediction log: S3
    assert any(key.startswith("dvc/files/md5/") for key in s3_keys(stack, "dvc/"))
    stored = {key.rsplit("/", 1)[0] for key in s3_keys(stack, "dagster-io/")}  # one object per run
    assert {f"dagster-io/{settings.model_name}/dataset", f"dagster-io/{settings.model_name}/training_set"} <= stored
    assert s3_keys(stack, "feast/") == ["feast/churn_features.parquet"]
    assert s3_keys(stack, "prediction-log/events/hour=") and s3_keys(stack, "prediction-log/labels/hour=")
    # MLflow over HTTP, artifacts proxied into S3
    registry = ModelRegistry(settings)
    assert registry.client.tracking_uri == stack.url("mlflow")
    assert registry.version_of("champion") == summary["after_drift"]["champion"]
    assert s3_keys(stack, "mlflow/")
    # Feast: registry in PostgreSQL, online features in Redis
    features = build_definitions(settings).resources["features"]
    assert type(features.store.registry).__name__ == "SqlRegistry"
    online = features.online_features([1, 2, 3])
    assert online.drop(columns=[settings.dataset_spec().entity]).notna().all().all()
    # the DVC versions are tags on the git server
    assert len(GitRemoteVersioner(settings).versions("dataset")) >= 3  # first build + two retrains
