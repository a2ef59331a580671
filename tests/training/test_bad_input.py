"""Bad input to training and the registry: a run fails with a clear message before anything is
registered, and a broken registry state is reported by a check rather than crashing."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from mlops_assets.data.generator import generate_churn
from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.training.split import MIN_ROWS_PER_SIDE, TrainingDataError, split_by_time

from tests.conftest import check_results, make_platform, materialized, step_failure
from tests.training.conftest import (TRAINING_SELECTION, aliases, byo_platform, check_metadata,
                                     registered_versions, run_config)

SPLIT_STEP = "training_and_holdout"  # the multi-asset producing training_set and holdout_set


# --- split_by_time, unit ------------------------------------------------------------------------
def test_split_is_by_time_with_the_newest_rows_held_out():
    frame = generate_churn(1_000, seed=2).sample(frac=1, random_state=0)  # shuffled on purpose
    train, holdout = split_by_time(frame, DEMO_SPEC, 0.2)
    assert len(train) + len(holdout) == 1_000
    assert 190 <= len(holdout) <= 210
    assert train[DEMO_SPEC.timestamp].max() < holdout[DEMO_SPEC.timestamp].min()
    assert holdout[DEMO_SPEC.timestamp].is_monotonic_increasing
    assert set(train[DEMO_SPEC.target]) == {0, 1}


def test_split_rejects_a_single_class():
    frame = generate_churn(500, seed=2).assign(churned=0)
    with pytest.raises(TrainingDataError, match=r"target column churned has a single class \[0\]: nothing to learn"):
        split_by_time(frame, DEMO_SPEC, 0.2)


def test_split_rejects_a_training_side_with_a_single_class():
    frame = generate_churn(500, seed=2).sort_values(DEMO_SPEC.timestamp).reset_index(drop=True)
    frame[DEMO_SPEC.target] = (frame.index >= 450).astype(int)  # positives only in the newest window
    with pytest.raises(TrainingDataError, match=(r"fewer than 10 rows of training class_1; class counts "
                                                 r"training: class_0=400, class_1=0; holdout: class_0=50, class_1=50")):
        split_by_time(frame, DEMO_SPEC, 0.2)


def test_split_rejects_too_few_rows():
    frame = generate_churn(60, seed=2)
    with pytest.raises(TrainingDataError) as caught:
        split_by_time(frame, DEMO_SPEC, 0.2)
    assert str(caught.value) == (f"dataset unknown, split time: 60 rows give 48 training rows "
                                 f"(at least {MIN_ROWS_PER_SIDE} needed)")


def test_split_rejects_missing_target_values():
    frame = generate_churn(500, seed=2)
    frame[DEMO_SPEC.target] = frame[DEMO_SPEC.target].astype(float)
    frame.loc[[3, 70, 400], DEMO_SPEC.target] = np.nan
    with pytest.raises(TrainingDataError, match="target column churned has 3 missing values"):
        split_by_time(frame, DEMO_SPEC, 0.2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_a_holdout_fraction_outside_0_1(fraction):
    with pytest.raises(TrainingDataError, match=f"holdout_fraction={fraction} must be between 0 and 1"):
        split_by_time(generate_churn(200, seed=2), DEMO_SPEC, fraction)


# --- bring-your-own datasets through the graph -------------------------------------------------------
def test_too_few_rows_fail_the_split_and_register_nothing(tmp_path):
    platform = byo_platform(tmp_path, generate_churn(60, seed=4))
    result = platform.materialize(TRAINING_SELECTION)
    assert check_results(result)["dataset_schema"].passed
    message = step_failure(result, SPLIT_STEP)
    assert "split time: 60 rows give 48 training rows (at least 50 needed)" in message
    assert f"dataset {platform.resource('versioner').versions('dataset')[0]}" in message
    assert materialized(result) == {"dataset", "feature_table", "feature_store"}
    assert registered_versions(platform) == []


def test_single_class_fails_the_split_and_registers_nothing(tmp_path):
    platform = byo_platform(tmp_path, generate_churn(400, seed=4).assign(churned=1))
    result = platform.materialize(TRAINING_SELECTION)
    assert check_results(result)["dataset_schema"].passed  # {1} is a valid label set; training cannot use it
    assert "target column churned has a single class [1]: nothing to learn" in step_failure(result, SPLIT_STEP)
    assert materialized(result) == {"dataset", "feature_table", "feature_store"}
    assert registered_versions(platform) == []


def test_missing_target_values_are_stopped_before_training(tmp_path):
    frame = generate_churn(400, seed=4)
    frame["churned"] = frame["churned"].astype(float)
    frame.loc[[5, 6, 7, 8], "churned"] = np.nan
    platform = byo_platform(tmp_path, frame)
    result = platform.materialize(TRAINING_SELECTION)
    gate = check_results(result)["dataset_schema"]
    assert not gate.passed and "churned: null values (4 rows)" in gate.description
    assert materialized(result) == {"dataset"}
    assert registered_versions(platform) == []


# --- a home with a champion: registry failures -----------------------------------------------------
@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """v1 then v2 (same data and seed: a tie, promoted): @champion 2, @previous 1."""
    home = tmp_path_factory.mktemp("registered")
    platform = make_platform(home)
    for _ in range(2):
        assert platform.materialize(TRAINING_SELECTION, run_config(rows=2_000)).success
    assert aliases(platform) == {"champion": "2", "previous": "1", "challenger": "2"}
    return home, platform


def mlflow_runs(platform) -> int:
    registry = platform.resource("registry")
    return len(registry.client.search_runs([registry.experiment_id()]))


def test_unreachable_tracking_store_fails_before_registering(registered):
    home, platform = registered
    versions, runs, before = registered_versions(platform), mlflow_runs(platform), aliases(platform)
    offline = make_platform(home, mlflow_tracking_uri_override="http://127.0.0.1:9")
    result = offline.materialize(TRAINING_SELECTION, run_config(rows=2_000))
    message = step_failure(result, "candidate_model")
    assert "MLflow tracking server http://127.0.0.1:9 cannot be reached" in message
    assert {"candidate_model", "champion_model", "model_explanations"}.isdisjoint(materialized(result))
    assert "beats_champion" not in check_results(result)
    assert registered_versions(platform) == versions and mlflow_runs(platform) == runs
    assert aliases(platform) == before


def test_unknown_model_type_fails_before_registering(registered):
    _, platform = registered
    versions, runs = registered_versions(platform), mlflow_runs(platform)
    result = platform.materialize(["candidate_model"], {"ops": {"candidate_model": {"config": {"model_type": "xgboost"}}}})
    message = step_failure(result, "candidate_model")
    assert "unknown model_type 'xgboost'; choose one of logistic_regression, hist_gradient_boosting, random_forest" in message
    assert registered_versions(platform) == versions and mlflow_runs(platform) == runs


def point_alias_at(platform, alias: str, version: int) -> None:
    """Write an alias row straight into the SQLite registry: MLflow itself drops an alias with its version."""
    path = platform.settings.mlflow_tracking_uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO registered_model_aliases (alias, version, name) VALUES (?, ?, ?)",
                   (alias, version, platform.resource("registry").name))


@pytest.fixture(scope="module")
def broken(registered):
    """Delete v1 (@previous), then put @previous back on it behind MLflow's back."""
    _, platform = registered
    registry = platform.resource("registry")
    registry.client.delete_model_version(registry.name, "1")
    assert registry.version_of("previous") is None, "MLflow removed the alias with its version"
    point_alias_at(platform, "previous", 1)
    return platform


def test_alias_on_a_deleted_version_is_reported_by_aliases_resolve(broken):
    registry = broken.resource("registry")
    assert registry.version_of("previous") == "1" and not registry.version_exists("1")
    result = broken.materialize(["champion_model"])  # re-promotes v2: idempotent, no alias moves
    assert result.success and materialized(result) == {"champion_model"}
    check = check_results(result)["aliases_resolve"]
    assert not check.passed
    assert check.description == "@previous points at deleted version 1"
    assert check_metadata(result, "aliases_resolve")["broken"] == {"previous": "1"}
    assert aliases(broken)["champion"] == "2"


def test_rollback_onto_a_deleted_version_is_refused(broken):
    registry = broken.resource("registry")
    audit_before = len(registry.audit_log())
    result = broken.defs.resolve_job_def("rollback").execute_in_process(instance=broken.instance,
                                                                       raise_on_error=False)
    assert not result.success
    assert ("refusing to point @champion at churn/1: that version does not exist"
            in step_failure(result, "rollback_champion"))
    assert aliases(broken)["champion"] == "2" and len(registry.audit_log()) == audit_before


def test_champion_on_a_deleted_version_is_treated_as_first_model(broken):
    registry = broken.resource("registry")
    point_alias_at(broken, "champion", 1)
    result = broken.materialize(["candidate_model", "champion_model"])
    gate = check_results(result)["beats_champion"]
    assert gate.passed and gate.description == "@champion points at missing version 1; treated as first model"
    assert materialized(result) == {"candidate_model", "champion_model"}
    assert aliases(broken) == {"champion": "3", "previous": "1", "challenger": "3"}
    # the promotion did not touch @previous (its target is gone), and the check still says so
    assert check_metadata(result, "aliases_resolve")["broken"] == {"previous": "1"}
    [move] = [m for m in registry.audit_log() if m.dagster_run_id == result.run_id]
    assert (move.alias, move.from_version, move.to_version) == ("champion", "1", "3")
