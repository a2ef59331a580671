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
    saved = {key: os.environ.get(key) for key in ("MLOPS_HOME", "MLOPS_PROFILE", "MLOPS_SERVING_HOLD_S")}
    os.environ["MLOPS_HOME"] = str(home)  # the servers started below resolve the same settings
    os.environ["MLOPS_PROFILE"] = "local"
    # Restarts take long on a busy 2-core machine: hold requests long enough to outlast one.
    os.environ["MLOPS_SERVING_HOLD_S"] = "180"
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


# The launcher: a short-lived process that imports Feast (which sets PROMETHEUS_MULTIPROC_DIR to a
# temporary directory), deploys, removes that directory (as a run's temporary directory is) and
# exits; serving must not depend on it.
LAUNCHER = """
import json, os, shutil, sys
import feast  # noqa: F401  (sets PROMETHEUS_MULTIPROC_DIR in this process's environment)
from mlops_assets.serving.backend_local import LocalServingBackend

assert os.environ.get("PROMETHEUS_MULTIPROC_DIR"), "feast no longer sets PROMETHEUS_MULTIPROC_DIR"
stable, canary = sys.argv[1], sys.argv[2]
backend = LocalServingBackend()
backend.deploy(stable)
state = backend.deploy_canary(canary, percent=20)
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # as a run's throwaway temporary directory goes
print(json.dumps({"state": state, "multiproc_dir": os.environ["PROMETHEUS_MULTIPROC_DIR"]}))
"""


def launch_from_short_lived_process(world: ServingWorld) -> dict:
    """Run LAUNCHER in a child process (the launcher has exited when this returns)."""
    import json
    import subprocess
    import sys

    env = world.settings.env_for_subprocess()  # without Feast's directory of this process: its own one
    assert not {"PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"} & set(env)
    done = subprocess.run([sys.executable, "-c", LAUNCHER, world.versions["stable"], world.versions["canary"]],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def launched(world) -> dict:
    """What the short-lived launcher saw: the deployment state and Feast's multiprocess directory."""
    from mlops_assets.serving.backend_local import LocalServingBackend

    try:
        yield launch_from_short_lived_process(world)
    finally:
        LocalServingBackend(world.settings).stop()


@pytest.fixture(scope="session")
def deployment(world, launched):
    """Stable = version 1 at 80%, canary = version 2 at 20%, behind the local ingress; each revision
    has the default two replicas. Started by a process that has exited since."""
    from mlops_assets.serving.backend_local import LocalServingBackend

    yield Deployment(LocalServingBackend(world.settings), launched["state"]["endpoint"])


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
