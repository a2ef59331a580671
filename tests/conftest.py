"""Session-wide fixtures: a real platform (DVC, Feast, MLflow) in a temporary MLOPS_HOME.

Expensive stores are shared per session; tests that change registry state get their own home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlops_assets.deployment.rollback import rollback
from mlops_assets.factory import LAYERS
from mlops_assets.resources import build_resources
from mlops_assets.settings import Settings, get_settings


def layer_definitions(settings: Settings) -> dg.Definitions:
    """The layers' own assets and checks (plain keys: ``dataset``, not ``churn/dataset``) with one
    model's resources and the rollback job: what the asset factory copies once per model."""
    return dg.Definitions(assets=dg.load_assets_from_modules(LAYERS),
                          asset_checks=dg.load_asset_checks_from_modules(LAYERS),
                          jobs=[rollback], resources=build_resources(settings))


@dataclass
class Platform:
    """A settings home with the layers' definitions and a Dagster instance, and a way to materialize."""

    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance

    def materialize(self, selection: str | list[str] | None = None, run_config: dict | None = None,
                    tags: dict | None = None) -> dg.ExecuteInProcessResult:
        assets = list(self.defs.assets)
        checks = list(self.defs.asset_checks)
        return dg.materialize(assets + checks, selection=selection, resources=self.defs.resources,
                              instance=self.instance, run_config=run_config or {}, tags=tags,
                              raise_on_error=False)

    def resource(self, name: str) -> Any:
        return self.defs.resources[name]


def make_platform(home: Path, **overrides) -> Platform:
    settings = replace(get_settings({"MLOPS_HOME": str(home)}), **overrides)
    settings.ensure_dirs()
    return Platform(settings=settings, defs=layer_definitions(settings),
                    instance=dg.DagsterInstance.ephemeral())


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory):
    """Anything that still reads the environment lands in a temporary home, never in the repo."""
    home = tmp_path_factory.mktemp("mlops-home")
    previous = os.environ.get("MLOPS_HOME")
    os.environ["MLOPS_HOME"] = str(home)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield home
    if previous is None:
        os.environ.pop("MLOPS_HOME", None)
    else:
        os.environ["MLOPS_HOME"] = previous


# Data to the registry: everything that needs no live servers or traffic.
OFFLINE_SELECTION = ["dataset", "feature_table", "feature_store", "training_set", "holdout_set",
                     "candidate_model", "model_explanations", "champion_model"]


@pytest.fixture(scope="session")
def platform(tmp_path_factory) -> Platform:
    """Data to the registry materialized once with the defaults: the first champion exists."""
    platform = make_platform(tmp_path_factory.mktemp("platform"))
    result = platform.materialize(OFFLINE_SELECTION)
    assert result.success, "the default materialization failed"
    return platform


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """{check name: AssetCheckEvaluation} for every check evaluated in the run."""
    return {event.event_specific_data.check_name: event.event_specific_data
            for event in result.all_events if event.event_type_value == "ASSET_CHECK_EVALUATION"}


def step_failure(result: dg.ExecuteInProcessResult, step: str) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.step_key == step:
            return event.event_specific_data.error.message + (
                event.event_specific_data.user_failure_data.description
                if event.event_specific_data.user_failure_data else "")
    raise AssertionError(f"step {step} did not fail")


def restore_environment(saved: dict[str, str | None]) -> None:
    """Put back environment variables a fixture changed (``None``: it was not set)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
