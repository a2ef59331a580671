"""Session fixtures for the serving tests: a temporary MLOPS_HOME with churn data in Feast, two
registered model versions (v1 @champion, v2 the canary) and one local serving deployment shared by
every test (real processes on loopback, stopped at teardown)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from mlops_assets.data.generator import generate_churn
from mlops_assets.settings import Settings, get_settings

N_ROWS, SEED = 5000, 7


@dataclass
class ServingWorld:
    settings: Settings
    data: pd.DataFrame
    latest: pd.DataFrame  # the row per customer the online store holds
    versions: dict[str, str]  # "stable"/"canary" -> registry version


def write_feature_store(settings: Settings, data: pd.DataFrame) -> None:
    from mlops_assets.features.store import FeatureStoreClient

    path = Path(settings.feast_offline_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = settings.dataset_spec()
    data[[spec.entity, spec.timestamp, *spec.features]].to_parquet(path, index=False)
    client = FeatureStoreClient(settings)
    client.apply()
    timestamps = data[spec.timestamp]
    client.materialize(timestamps.min() - timedelta(days=1), timestamps.max() + timedelta(days=1))


def train_and_register(settings: Settings, data: pd.DataFrame, C: float) -> str:
    """Log a logistic-regression pipeline the way training does and register it; returns the version."""
    import mlflow

    from mlops_assets.training.model import build_pipeline, log_model_artifacts

    spec = settings.dataset_spec()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)  # else an earlier test's registry is used
    mlflow.set_experiment("serving-tests")
    pipeline = build_pipeline(spec, "logistic_regression", {"C": C}, SEED)
    pipeline.fit(data[spec.features], data[spec.target])
    with mlflow.start_run():
        uri = log_model_artifacts(pipeline, data, spec, SEED)
    return str(mlflow.register_model(uri, settings.model_name).version)


def build_world(home: Path) -> ServingWorld:
    settings = get_settings({"MLOPS_HOME": str(home)})
    settings.ensure_dirs()
    spec = settings.dataset_spec()
    data = generate_churn(N_ROWS, SEED)
    write_feature_store(settings, data)
    stable = train_and_register(settings, data, C=1.0)
    canary = train_and_register(settings, data, C=0.05)
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(settings.model_name, "champion", stable)
    latest = data.sort_values(spec.timestamp).groupby(spec.entity).tail(1).set_index(spec.entity)
    return ServingWorld(settings, data, latest, {"stable": stable, "canary": canary})


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> ServingWorld:
    home = tmp_path_factory.mktemp("mlops-home")
    saved = {key: os.environ.get(key) for key in ("MLOPS_HOME", "MLOPS_PROFILE")}
    os.environ["MLOPS_HOME"] = str(home)  # the servers started below resolve the same settings
    os.environ["MLOPS_PROFILE"] = "local"
    try:
        yield build_world(home)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Deployment:
    backend: object  # LocalServingBackend
    endpoint: str

    def revision(self, name: str) -> dict:
        return self.backend.status()["revisions"][name]

    def predict_url(self, base: str | None = None) -> str:
        return f"{base or self.endpoint}/v1/models/churn:predict"


@pytest.fixture(scope="session")
def deployment(world):
    """Stable = version 1 at 80%, canary = version 2 at 20%, behind the local ingress."""
    from mlops_assets.serving.backend_local import LocalServingBackend

    backend = LocalServingBackend(world.settings)
    try:
        backend.deploy(world.versions["stable"])
        state = backend.deploy_canary(world.versions["canary"], percent=20)
        yield Deployment(backend, state["endpoint"])
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def pipelines(world):
    """The registered pipelines, loaded in-process, by version."""
    import mlflow

    mlflow.set_tracking_uri(world.settings.mlflow_tracking_uri)
    return {version: mlflow.sklearn.load_model(f"models:/{world.settings.model_name}/{version}")
            for version in world.versions.values()}


def feature_row(world, index: int = 0) -> dict:
    spec = world.settings.dataset_spec()
    return world.data[spec.features].iloc[index].to_dict()
