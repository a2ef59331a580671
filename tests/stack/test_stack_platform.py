"""The `stack` profile's resources against the real services: data to the registry materialized
with every piece of state in a service, then read back from a brand-new directory."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import dagster as dg
import pytest

from mlops_assets.data.git_remote import GitRemoteVersioner
from mlops_assets.definitions import build_definitions
from mlops_assets.loop import open_instance
from mlops_assets.monitoring.stores import StackMonitoring
from tests.conftest import OFFLINE_SELECTION
from tests.stack.conftest import stack_settings

pytestmark = pytest.mark.integration


def s3_keys(stack, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=stack.url("s3"), aws_access_key_id="stack",
                          aws_secret_access_key="stack-secret", region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="mlops", Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="session")
def stack_platform(stack, tmp_path_factory):
    settings = stack_settings(stack, tmp_path_factory.mktemp("stack-home"))
    settings.ensure_dirs()
    defs = build_definitions(settings)
    instance = open_instance(settings)
    result = dg.materialize([*defs.assets, *defs.asset_checks], selection=OFFLINE_SELECTION,
                            resources=defs.resources, instance=instance, raise_on_error=False)
    failures = [e.event_specific_data.error.message for e in result.all_events
                if e.event_type_value == "STEP_FAILURE"]
    assert result.success, failures
    return settings, defs, instance, result


def test_resources_are_chosen_by_the_profile(stack_platform):
    settings, defs, _, _ = stack_platform
    from dagster_aws.s3 import S3PickleIOManager

    assert isinstance(defs.resources["versioner"], GitRemoteVersioner)
    assert isinstance(defs.resources["monitoring"], StackMonitoring)
    assert isinstance(defs.resources["io_manager"], S3PickleIOManager)


def test_every_piece_of_state_is_in_a_service(stack, stack_platform):
    settings, _, instance, result = stack_platform
    # Dagster: the run is in PostgreSQL
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert instance.get_run_by_id(result.run_id) is not None
    # DVC data and the IO manager's outputs in S3; the Feast offline table too
    assert any(key.startswith("dvc/files/md5/") for key in s3_keys(stack, "dvc/"))
    assert {"dagster-io/dataset", "dagster-io/training_set"} <= set(s3_keys(stack, "dagster-io/"))
    assert s3_keys(stack, "feast/") == ["feast/churn_features.parquet"]
    # MLflow over HTTP, artifacts proxied to S3
    from mlops_assets.registry.client import ModelRegistry

    registry = ModelRegistry(settings)
    assert registry.client.tracking_uri == stack.url("mlflow")
    assert registry.version_of("champion") is not None
    assert s3_keys(stack, "mlflow/")
    # Feast: the registry in PostgreSQL, the online store in Redis
    features = build_definitions(settings).resources["features"]
    assert type(features.store.registry).__name__ == "SqlRegistry"
    online = features.online_features([1, 2, 3])
    assert online.drop(columns=["customer_id"]).notna().all().all()
    # nothing of the run's state was written to MLOPS_HOME
    leftovers = {p.name for p in settings.home.iterdir()}
    assert leftovers <= {"dagster", "logs", "serving"}, leftovers


def test_dataset_and_holdout_read_back_by_md5_from_a_brand_new_directory(stack, stack_platform, tmp_path):
    settings, _, _, result = stack_platform
    md5 = {}
    for event in result.get_asset_materialization_events():
        metadata = event.step_materialization_data.materialization.metadata
        if "md5" in metadata:
            md5[event.asset_key.to_user_string()] = metadata["md5"].value
    assert set(md5) >= {"dataset"}
    versions = GitRemoteVersioner(settings).versions("holdout")
    assert len(versions) == 1
    script = (
        "import io, json, sys, dvc.api, pandas as pd\n"
        "out = {}\n"
        "for name, md5 in json.loads(sys.argv[2]).items():\n"
        "    data = dvc.api.read(f'{name}.parquet', repo=sys.argv[1], rev=f'{name}-{md5}', mode='rb')\n"
        "    out[name] = len(pd.read_parquet(io.BytesIO(data)))\n"
        "print(json.dumps(out))\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "stack",
           "AWS_SECRET_ACCESS_KEY": "stack-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    wanted = {"dataset": md5["dataset"], "holdout": versions[0]}
    done = subprocess.run([sys.executable, "-c", script, settings.data_git_url, json.dumps(wanted)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    dataset_meta = next(e.step_materialization_data.materialization.metadata for e in result.get_asset_materialization_events()
                        if e.asset_key.to_user_string() == "dataset")
    assert rows["dataset"] == dataset_meta["rows"].value
    assert rows["holdout"] > 0
