"""The data layer against real DVC: versions, read-back, the schema gate and bad inputs."""

from __future__ import annotations

import dvc.api
import pandas as pd
import pytest
import yaml

from mlops_assets.data.generator import generate_churn
from mlops_assets.data.schema import validate_dataset
from mlops_assets.data.spec import DEMO_SPEC

from tests.conftest import check_results, make_platform, materialized, step_failure


@pytest.fixture(scope="module")
def data_platform(tmp_path_factory):
    return make_platform(tmp_path_factory.mktemp("data"))


def dataset_version(result) -> str:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["dataset"]]
    return event.step_materialization_data.materialization.tags["dagster/data_version"]


def dataset_config(rows=2_000, seed=3) -> dict:
    return {"ops": {"dataset": {"config": {"rows": rows, "seed": seed}}}}


def test_md5_is_the_data_version_and_round_trips_through_dvc(data_platform):
    result = data_platform.materialize(["dataset"], dataset_config())
    assert result.success
    md5 = dataset_version(result)
    versioner = data_platform.resource("versioner")
    expected = generate_churn(2_000, seed=3)
    by_md5 = versioner.read_table("dataset", md5=md5)
    pd.testing.assert_frame_equal(by_md5, expected)
    # and through plain dvc.api by git revision, from the pushed remote
    rev = next(e for e in result.get_asset_materialization_events()).step_materialization_data \
        .materialization.metadata["git_rev"].value
    raw = dvc.api.read("dataset.parquet", repo=str(versioner.root), rev=rev, mode="rb", remote="storage")
    assert len(raw) > 0 and md5 in versioner.versions("dataset")
    remote_file = data_platform.settings.home / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]
    assert remote_file.exists(), "dvc push did not reach the local remote"


def test_data_version_is_stable_for_a_seed_and_changes_with_rows(data_platform):
    first = dataset_version(data_platform.materialize(["dataset"], dataset_config(seed=11)))
    again = dataset_version(data_platform.materialize(["dataset"], dataset_config(seed=11)))
    more = dataset_version(data_platform.materialize(["dataset"], dataset_config(rows=2_001, seed=11)))
    assert first == again
    assert more != first
    assert {first, more} <= set(data_platform.resource("versioner").versions("dataset"))


def _break(kind: str) -> pd.DataFrame:
    frame = generate_churn(300, seed=5)
    if kind == "extra column":
        frame["surprise"] = 1.0
    elif kind == "wrong dtype":
        frame["monthly_charges"] = frame["monthly_charges"].astype(str)
    elif kind == "null key":
        frame["customer_id"] = frame["customer_id"].astype("Int64")
        frame.loc[:3, "customer_id"] = pd.NA
    elif kind == "null timestamp":
        frame.loc[:4, "event_timestamp"] = pd.NaT
    elif kind == "duplicated pair":
        frame.loc[1, ["customer_id", "event_timestamp"]] = frame.loc[0, ["customer_id", "event_timestamp"]].values
    elif kind == "empty table":
        frame = frame.iloc[0:0]
    elif kind == "label outside {0,1}":
        frame.loc[:6, "churned"] = 2
    elif kind == "missing column":
        frame = frame.drop(columns=["support_calls"])
    return frame


VIOLATIONS = {
    # kind: (column named, rows counted in the message)
    "extra column": ("surprise", None),
    "wrong dtype": ("monthly_charges", None),
    "null key": ("customer_id", 4),
    "null timestamp": ("event_timestamp", 5),
    "duplicated pair": ("customer_id", 2),
    "empty table": ("<table>", None),
    "label outside {0,1}": ("churned", 7),
    "missing column": ("support_calls", None),
}


@pytest.mark.parametrize("kind", VIOLATIONS)
def test_schema_violation_names_column_and_rows(kind):
    column, rows = VIOLATIONS[kind]
    violations = validate_dataset(_break(kind), DEMO_SPEC)
    assert violations, f"{kind} passed the schema"
    hit = [v for v in violations if v.column == column]
    assert hit, f"{kind}: no violation names {column}: {violations}"
    if rows is not None:
        assert any(v.rows == rows for v in hit), f"{kind}: expected {rows} rows in {hit}"


def write_byo(tmp_path, frame: pd.DataFrame, **config_overrides) -> str:
    data = tmp_path / "table.parquet"
    frame.to_parquet(data)
    config = {"source": data.name, "entity": "customer_id", "timestamp": "event_timestamp",
              "target": "churned", "numeric": list(DEMO_SPEC.numeric), "categorical": list(DEMO_SPEC.categorical),
              "integer": list(DEMO_SPEC.integer), **config_overrides}
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("kind", [k for k in VIOLATIONS if k not in ("missing column",)])
def test_schema_gate_blocks_everything_downstream(tmp_path, kind):
    config = write_byo(tmp_path, _break(kind))
    platform = make_platform(tmp_path / "home", dataset_config=config)
    result = platform.materialize(["dataset", "feature_table", "feature_store"])
    check = check_results(result)["dataset_schema"]
    assert not check.passed
    assert VIOLATIONS[kind][0] in check.description
    assert materialized(result) == {"dataset"}, "downstream assets ran despite a failing schema gate"


def test_bring_your_own_dataset_materializes(tmp_path):
    config = write_byo(tmp_path, generate_churn(600, seed=9), name="my_churn")
    platform = make_platform(tmp_path / "home", dataset_config=config)
    result = platform.materialize(["dataset", "feature_table", "feature_store"])
    assert result.success and materialized(result) == {"dataset", "feature_table", "feature_store"}
    assert check_results(result)["dataset_schema"].passed


def test_missing_dataset_file_fails_with_its_name(tmp_path):
    config = write_byo(tmp_path, generate_churn(100, seed=1))
    (tmp_path / "table.parquet").unlink()
    platform = make_platform(tmp_path / "home", dataset_config=config)
    result = platform.materialize(["dataset"])
    assert "table.parquet does not exist" in step_failure(result, "dataset")
    assert materialized(result) == set()


def test_config_naming_a_missing_column_fails_with_the_column(tmp_path):
    config = write_byo(tmp_path, generate_churn(100, seed=1), numeric=["tenure_months", "no_such_col"])
    platform = make_platform(tmp_path / "home", dataset_config=config)
    result = platform.materialize(["dataset"])
    assert "no_such_col" in step_failure(result, "dataset")
    assert materialized(result) == set()


def test_unreadable_dataset_file_fails_with_its_name(tmp_path):
    config = write_byo(tmp_path, generate_churn(100, seed=1))
    (tmp_path / "table.parquet").write_bytes(b"not parquet at all")
    platform = make_platform(tmp_path / "home", dataset_config=config)
    result = platform.materialize(["dataset"])
    assert "cannot read dataset file" in step_failure(result, "dataset")
    assert materialized(result) == set()


def test_unwritable_dvc_remote_fails_with_the_remote(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the remote folder should be")
    platform = make_platform(tmp_path / "home")
    monkeypatch.setattr(type(platform.resource("versioner")), "remote", None, raising=False)
    platform.resource("versioner").remote = str(blocker / "remote")
    result = platform.materialize(["dataset"], dataset_config(rows=500))
    message = step_failure(result, "dataset")
    assert "cannot push dataset.parquet to DVC remote" in message and str(blocker) in message
    assert materialized(result) == set()


def test_unknown_scenario_is_a_clear_failure(data_platform):
    result = data_platform.materialize(["dataset"], {"ops": {"dataset": {"config": {"scenario": "meteor"}}}})
    assert "unknown scenario 'meteor'" in step_failure(result, "dataset")
