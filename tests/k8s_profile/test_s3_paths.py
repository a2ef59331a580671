"""The k8s profile's S3 paths against a local S3-compatible server (moto in server mode): DVC push
and pull of a dataset version, the S3 IO manager through a real materialization, MLflow artifacts."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd
import pytest

from mlops_assets.settings import get_settings

from .conftest import k8s_env, s3_keys

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path, s3_server, bucket):
    settings = get_settings(k8s_env(tmp_path / "home", bucket, MLOPS_S3_ENDPOINT_URL=s3_server,
                                    MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    settings.ensure_dirs()
    return settings


def test_dvc_pushes_a_dataset_version_to_s3_and_pulls_it_back(settings, s3_server, bucket):
    from mlops_assets.data.versioning import DataVersioner

    assert settings.dvc_remote == f"s3://{bucket}/dvc"
    frame = pd.DataFrame({"customer_id": [1, 2, 3], "tenure": [4.5, 0.5, 12.0], "churned": [0, 1, 0]})
    versioner = DataVersioner(settings)
    version = versioner.commit_table(frame, "dataset", message="three customers")

    # pushed: DVC's content-addressed layout under the remote's prefix, nothing else
    keys = s3_keys(s3_server, bucket)
    assert keys == [f"dvc/files/md5/{version.md5[:2]}/{version.md5[2:]}"]

    # pulled: with the local cache and the working copy gone, the version comes from S3
    shutil.rmtree(settings.data_repo / ".dvc" / "cache")
    (settings.data_repo / "dataset.parquet").unlink()
    pd.testing.assert_frame_equal(versioner.read_table("dataset", md5=version.md5), frame)
    assert versioner.versions("dataset") == [version.md5]


def test_s3_io_manager_keeps_each_runs_outputs_apart(settings, s3_server, bucket):
    import pickle

    import boto3

    from mlops_assets.io_manager import RunScopedIOManager
    from mlops_assets.resources import io_manager

    @dg.asset
    def raw_counts() -> dict:
        return {"a": 1, "b": 2}

    @dg.asset
    def doubled(raw_counts: dict) -> dict:
        return {k: v * 2 for k, v in raw_counts.items()}

    manager = io_manager(settings)
    assert isinstance(manager, RunScopedIOManager) and manager.s3_bucket == bucket
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize([raw_counts, doubled], resources={"io_manager": manager}, instance=instance)
    assert first.success and first.output_for_node("doubled") == {"a": 2, "b": 4}
    assert s3_keys(s3_server, bucket) == [f"dagster-io/doubled/{first.run_id}", f"dagster-io/raw_counts/{first.run_id}"]

    # a run of the downstream asset alone loads its input from the run that materialized it last
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=bucket, Key=f"dagster-io/raw_counts/{first.run_id}", Body=pickle.dumps({"a": 10}))
    second = dg.materialize([raw_counts, doubled], selection=["doubled"], resources={"io_manager": manager},
                            instance=instance)
    assert second.success and second.output_for_node("doubled") == {"a": 20}
    stored = pickle.loads(s3.get_object(Bucket=bucket, Key=f"dagster-io/doubled/{second.run_id}")["Body"].read())
    assert stored == {"a": 20}
    # the first run's copy of `doubled` is untouched by the second run
    kept = pickle.loads(s3.get_object(Bucket=bucket, Key=f"dagster-io/doubled/{first.run_id}")["Body"].read())
    assert kept == {"a": 2, "b": 4}


def test_mlflow_model_artifacts_are_stored_in_s3_and_loaded_back(settings, s3_server, bucket, monkeypatch):
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from mlops_assets.registry.client import ModelRegistry

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    registry = ModelRegistry(settings)
    experiment = registry.experiment_id()
    assert registry.client.get_experiment(experiment).artifact_location == f"s3://{bucket}/mlflow/churn-training"

    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
    version = registry.register(info.model_uri, run.info.run_id, tags={"test": "s3"})

    prefix = f"mlflow/churn-training/models/{info.model_id}/artifacts/"
    keys = s3_keys(s3_server, bucket, "mlflow/")
    assert keys and all(k.startswith(prefix) for k in keys), keys
    assert {k[len(prefix):] for k in keys} == {"MLmodel", "model.skops", "conda.yaml", "python_env.yaml",
                                              "requirements.txt"}
    loaded = registry.load_model(version)
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))
