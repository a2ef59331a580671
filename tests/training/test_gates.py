"""Gates that cannot be fooled: an undefined metric never passes, split strategies keep both classes
in the holdout, the bootstrap interval decides, and the UI names the champion after a rollback."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_assets.data.generator import generate_churn
from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.training.gate import GateConfigError, GatePlan, auc, compare, non_finite, paired_bootstrap_interval
from mlops_assets.training.split import SplitPlan, TrainingDataError, class_counts, split

from tests.conftest import check_results, make_platform, materialized, step_failure
from tests.training.conftest import (TRAINING_SELECTION, aliases, asset_metadata, byo_platform, check_metadata,
                                     registered_versions, run_config)

SPLIT_STEP = "training_and_holdout"


def positives_first(rows: int = 2_400, seed: int = 5) -> pd.DataFrame:
    """A real-looking table whose positives all sit at the start of its time range (the shape that
    gave a single-class holdout and a NaN ROC AUC that passed both gates)."""
    frame = generate_churn(rows, seed=seed).sort_values(DEMO_SPEC.timestamp).reset_index(drop=True)
    early = frame.index < int(rows * 0.35)
    frame[DEMO_SPEC.target] = (early & (frame["contract"] == "month-to-month")).astype(np.int64)
    return frame


# --- split strategies, unit ---------------------------------------------------------------------------
def test_stratified_time_holds_out_the_newest_rows_of_each_class():
    frame = positives_first()
    train, holdout = split(frame, DEMO_SPEC, SplitPlan("stratified_time", 0.2))
    counts = class_counts(holdout, DEMO_SPEC)
    assert counts["class_0"] > 0 and counts["class_1"] > 0
    for label in (0, 1):  # per class, every held-out row is newer than every training row
        assert (train.loc[train.churned == label, DEMO_SPEC.timestamp].max()
                <= holdout.loc[holdout.churned == label, DEMO_SPEC.timestamp].min())
        share = counts[f"class_{label}"] / (frame.churned == label).sum()
        assert abs(share - 0.2) < 0.01


def test_random_split_is_seeded():
    frame = generate_churn(1_000, seed=3)
    first = split(frame, DEMO_SPEC, SplitPlan("random", 0.25, seed=11))[1]
    again = split(frame, DEMO_SPEC, SplitPlan("random", 0.25, seed=11))[1]
    other = split(frame, DEMO_SPEC, SplitPlan("random", 0.25, seed=12))[1]
    pd.testing.assert_frame_equal(first, again)
    assert len(first) == 250 and not first[DEMO_SPEC.entity].equals(other[DEMO_SPEC.entity])


def test_time_split_of_positives_first_data_names_the_dataset_and_class_counts():
    with pytest.raises(TrainingDataError) as caught:
        split(positives_first(), DEMO_SPEC, SplitPlan("time", 0.2), dataset_md5="abc123")
    message = str(caught.value)
    assert message.startswith("dataset abc123, split time (holdout_fraction 0.2): fewer than 10 rows of holdout class_1")
    assert "holdout: class_0=480, class_1=0" in message and "stratified_time" in message


@pytest.mark.parametrize("plan, error", [
    (SplitPlan("alphabetical"), "split strategy 'alphabetical' is not one of time, stratified_time, random"),
    (SplitPlan(min_class_count=0), "min_class_count=0 must be at least 1"),
])
def test_bad_split_plans_are_named(plan, error):
    with pytest.raises(TrainingDataError, match=error):
        split(generate_churn(500, seed=1), DEMO_SPEC, plan)


def test_a_target_other_than_0_1_is_refused():
    frame = generate_churn(500, seed=1)
    frame.loc[frame.index[:5], DEMO_SPEC.target] = 2
    with pytest.raises(TrainingDataError, match=r"target column churned must be 0/1; it also holds \[2\]"):
        split(frame, DEMO_SPEC, SplitPlan())


# --- the comparison, unit ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2_000)
    good = np.clip(0.5 * y + rng.normal(0.25, 0.2, len(y)), 0, 1)
    noise = rng.random(len(y))
    return y, good, noise


def test_auc_matches_scikit_learn_with_ties_and_weights(scores):
    from sklearn.metrics import roc_auc_score

    from mlops_assets.training.gate import _weighted_auc

    y, good, _ = scores
    rounded = np.round(good, 1)  # many ties
    assert auc(y, rounded) == pytest.approx(roc_auc_score(y, rounded), abs=1e-12)
    weights = np.random.default_rng(1).integers(0, 4, (3, len(y))).astype(float)
    expected = [roc_auc_score(y, rounded, sample_weight=w) for w in weights]
    np.testing.assert_allclose(_weighted_auc(y, rounded, weights), expected, atol=1e-12)
    assert math.isnan(auc(np.zeros(10), np.arange(10)))


def test_identical_models_fail_superiority_and_pass_non_inferiority(scores):
    y, good, _ = scores
    superiority = compare(GatePlan("superiority"), y, good, good)
    non_inferiority = compare(GatePlan("non_inferiority", margin=0.01), y, good, good)
    assert (superiority.low, superiority.high, superiority.difference) == (0.0, 0.0, 0.0)
    assert not superiority.passed and "superiority needs the lower bound > 0" in superiority.description
    assert non_inferiority.passed


def test_a_clearly_better_model_passes_both_and_the_interval_is_reproducible(scores):
    y, good, noise = scores
    for policy in ("superiority", "non_inferiority"):
        result = compare(GatePlan(policy, seed=3), y, good, noise)
        assert result.passed and result.low > 0.2, result.description
    first = paired_bootstrap_interval(y, good, noise, 500, 0.9, seed=42)
    assert first == paired_bootstrap_interval(y, good, noise, 500, 0.9, seed=42)
    assert first != paired_bootstrap_interval(y, good, noise, 500, 0.9, seed=43)


def test_a_worse_model_fails_every_policy(scores):
    y, good, noise = scores
    for plan in (GatePlan("superiority"), GatePlan("non_inferiority"), GatePlan("plain", tolerance=0.01)):
        assert not compare(plan, y, noise, good).passed


def test_non_finite_scores_fail_every_policy(scores):
    y, good, _ = scores
    with_nan = good.copy()
    with_nan[3] = np.nan
    single_class = np.zeros(len(y), dtype=int)
    for plan in (GatePlan("superiority"), GatePlan("non_inferiority"), GatePlan("plain", tolerance=1.0)):
        assert not compare(plan, single_class, good, good).passed  # AUC undefined: NaN
        result = compare(plan, y, with_nan, good)
        assert not result.passed and "not finite" in result.description
    assert non_finite({"roc_auc": float("nan"), "accuracy": 0.9, "log_loss": float("inf"), "f1": None}) == {
        "roc_auc": pytest.approx(float("nan"), nan_ok=True), "log_loss": float("inf"), "f1": None}


@pytest.mark.parametrize("fields, error", [
    ({"policy": "vibes"}, "gate policy 'vibes' is not one of superiority, non_inferiority, plain"),
    ({"policy": "superiority", "resamples": 0}, "gate resamples=0 must be at least 1"),
    ({"policy": "non_inferiority", "level": 1.0}, r"gate level=1.0 must be between 0 and 1"),
    ({"policy": "non_inferiority", "level": 0.0}, r"gate level=0.0 must be between 0 and 1"),
    ({"policy": "non_inferiority", "margin": -0.1}, r"gate margin=-0.1 must be a finite number >= 0"),
])
def test_bad_gate_configs_are_named(fields, error):
    with pytest.raises(GateConfigError, match=error):
        GatePlan(**fields).validate()


def test_policy_defaults_by_trigger():
    assert GatePlan.resolve(None, automatic=True).policy == "superiority"
    assert GatePlan.resolve(None, automatic=False).policy == "non_inferiority"
    assert GatePlan.resolve("plain", automatic=True).policy == "plain"


# --- through the graph: bring-your-own data whose positives come first ---------------------------------
def test_positives_first_fails_with_time_split_and_trains_with_stratified_time(tmp_path):
    platform = byo_platform(tmp_path, positives_first())
    failed = platform.materialize(TRAINING_SELECTION)
    message = step_failure(failed, SPLIT_STEP)
    md5 = platform.resource("versioner").versions("dataset")[0]
    assert f"dataset {md5}, split time (holdout_fraction 0.2): fewer than 10 rows of holdout class_1" in message
    assert "holdout: class_0=480, class_1=0" in message
    assert materialized(failed) == {"dataset", "feature_table", "feature_store"}
    assert registered_versions(platform) == [] and aliases(platform)["champion"] is None

    stratified = platform.materialize(TRAINING_SELECTION, {"ops": {"training_and_holdout": {
        "config": {"strategy": "stratified_time"}}}})
    assert stratified.success, step_failure(stratified, "candidate_model")
    holdout = asset_metadata(stratified, "holdout_set")
    assert holdout["split.strategy"] == "stratified_time" and holdout["class_1"] > 0 and holdout["class_0"] > 0
    run = platform.resource("registry").version_info("1")
    assert run["run_tags"]["split.strategy"] == "stratified_time"
    params = platform.resource("registry").client.get_run(run["run_id"]).data.params
    assert params["split.strategy"] == "stratified_time"
    assert int(params["holdout_class_1"]) == holdout["class_1"] and int(params["training_class_0"]) > 0
    assert aliases(platform)["champion"] == "1"


# --- through the graph: the bootstrap gate, golden holdout, bad config, rollback ------------------------
@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """v1 trained on shuffled labels (champion: the first model); then real candidates."""
    platform = make_platform(tmp_path_factory.mktemp("gated"))
    first = platform.materialize(TRAINING_SELECTION, run_config(shuffle_labels=True, floors={}))
    assert first.success and aliases(platform)["champion"] == "1"
    return platform


def gate_tags(platform, version: str) -> dict[str, str]:
    tags = platform.resource("registry").version_info(version)["version_tags"]
    return {k: v for k, v in tags.items() if k.startswith("gate.")}


GATED = [name for name in TRAINING_SELECTION if name not in ("dataset", "feature_table", "feature_store")]


def training(**config) -> dict:
    return {"ops": {"candidate_model": {"config": config}}}


def test_the_gate_story(gated):
    """better (superiority passes) -> identical, automatic (superiority fails) -> identical, manual
    (non-inferiority passes) -> golden holdout scored -> rollback recorded in the asset graph."""
    platform, registry = gated, gated.resource("registry")
    holdout_md5 = platform.instance.get_latest_materialization_event(
        dg.AssetKey("holdout_set")).asset_materialization.metadata["holdout_md5"].value

    better = platform.materialize(GATED, training(gate={"policy": "superiority"}))
    assert better.success and aliases(platform)["champion"] == "2"
    meta = check_metadata(better, "beats_champion")
    assert meta["policy"] == "superiority" and meta["ci_low"] > 0
    tags = gate_tags(platform, "2")
    assert tags["gate.beats_champion"] == "passed" and tags["gate.champion_version"] == "1"
    assert float(tags["gate.ci_low"]) == pytest.approx(meta["ci_low"], abs=1e-6)
    assert tags["gate.run_id"] == better.run_id and "95% CI [" in check_results(better)["beats_champion"].description

    automatic = platform.materialize(GATED, training(), tags={"mlops/trigger": "drift"})
    gate = check_results(automatic)["beats_champion"]
    assert not gate.passed and "FAIL (superiority)" in gate.description and "[+0.0000, +0.0000]" in gate.description
    assert "champion_model" not in materialized(automatic) and aliases(platform)["champion"] == "2"
    assert gate_tags(platform, "3")["gate.beats_champion"] == "failed"

    manual = platform.materialize(GATED, training(golden_holdout=holdout_md5))
    gate = check_results(manual)["beats_champion"]
    assert gate.passed and "PASS (non_inferiority)" in gate.description
    assert aliases(platform) == {"champion": "4", "previous": "2", "challenger": "4"}
    tags = gate_tags(platform, "4")
    assert tags["gate.golden_candidate_score"] == tags["gate.golden_champion_score"]  # same model, same rows
    assert asset_metadata(manual, "candidate_model")["golden_roc_auc"] > 0.7

    rollback = platform.defs.resolve_job_def("rollback").execute_in_process(instance=platform.instance)
    assert rollback.success and aliases(platform)["champion"] == "2"
    latest = platform.instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    assert latest.run_id == rollback.run_id
    assert latest.asset_materialization.metadata["champion_version"].value == "2"
    serving = platform.instance.fetch_observations(dg.AssetKey("inference_service"), limit=1).records
    assert serving and serving[0].run_id == rollback.run_id  # nothing was serving: observed, not materialized


@pytest.mark.parametrize("config, error", [
    ({"golden_holdout": "0" * 32}, f"golden holdout '{'0' * 32}' does not exist"),
    ({"gate": {"resamples": 0}}, "gate resamples=0 must be at least 1"),
    ({"gate": {"level": 1.5}}, "gate level=1.5 must be between 0 and 1"),
    ({"gate": {"policy": "superiority", "level": 0}}, "gate level=0.0 must be between 0 and 1"),
])
def test_bad_gate_input_fails_before_registration_and_moves_no_alias(gated, config, error):
    before, versions = aliases(gated), registered_versions(gated)
    result = gated.materialize(["candidate_model", "champion_model"], training(**config))
    message = step_failure(result, "candidate_model")
    assert "nothing registered" in message and error in message
    assert aliases(gated) == before and registered_versions(gated) == versions


def test_undefined_metrics_fail_both_checks_through_a_materialization(gated):
    """A candidate output with a NaN metric and a one-class holdout reach the real checks."""
    from mlops_assets.training.assets import beats_champion, meets_floor

    registry = gated.resource("registry")
    version = registry.version_of("champion")
    one_class = generate_churn(200, seed=9).assign(churned=0)
    one_class.attrs["holdout_md5"] = "one-class"

    @dg.asset(name="candidate_model")
    def stub_candidate() -> dict:
        return {"version": version, "metrics": {"roc_auc": float("nan"), "accuracy": 0.8},
                "floors": {"roc_auc": 0.6, "accuracy": 0.5}, "gate": GatePlan("non_inferiority").as_dict()}

    @dg.asset(name="holdout_set")
    def stub_holdout() -> pd.DataFrame:
        return one_class

    result = dg.materialize([stub_candidate, stub_holdout, beats_champion, meets_floor],
                            resources=gated.defs.resources, instance=gated.instance, raise_on_error=False)
    checks = check_results(result)
    assert not checks["meets_floor"].passed and "roc_auc is undefined (nan)" in checks["meets_floor"].description
    assert not checks["beats_champion"].passed and "not finite" in checks["beats_champion"].description


def test_steps_that_move_aliases_or_serving_share_one_pool_limited_to_one(tmp_path):
    from mlops_assets.loop import open_instance
    from mlops_assets.registry.assets import RELEASE_POOL
    from mlops_assets.settings import get_settings

    defs = make_platform(tmp_path / "pool").defs
    assert {key: defs.resolve_assets_def(key).op.pool for key in ("champion_model", "inference_service")} == {
        "champion_model": RELEASE_POOL, "inference_service": RELEASE_POOL}
    assert {node.definition.pool for node in defs.resolve_job_def("rollback").graph.nodes} == {RELEASE_POOL}
    assert defs.resolve_assets_def("candidate_model").op.pool is None  # training runs overlap freely
    instance = open_instance(get_settings({"MLOPS_HOME": str(tmp_path / "home")}))
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    helm = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster" / "values.yaml").read_text())
    assert helm["concurrency"]["pools"] == {"defaultLimit": 1, "granularity": "op"}  # the same on Kubernetes
