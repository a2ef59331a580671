"""Training, gating, promotion and rollback against a real MLflow SQLite registry, DVC and Feast.

One story per module, run once:
  1. a weak first model (C=0.0005)        -> promoted, "first model"
  2. the default model                     -> beats it, promoted, @previous = the weak one
  3. a candidate trained on shuffled labels -> fails beats_champion, nothing promoted
  4. champion_model alone, after that loss -> refuses to promote the ungated loser
  5. the default model again (no promotion) -> identical metrics, ties the champion exactly
  6. the rollback job                       -> @champion back to the weak model, audited
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from mlops_assets.data.generator import generate_churn
from mlops_assets.registry.client import CHAMPION, PREVIOUS

from tests.conftest import Platform, check_results, make_platform, materialized, step_failure
from tests.training.conftest import (ROWS, TRAINING_SELECTION, aliases, asset_metadata, check_metadata,
                                     gate_line, registered_versions, run_config, stored_output)

GATED = [name for name in TRAINING_SELECTION if name != "champion_model"]


@dataclass
class Story:
    platform: Platform
    runs: dict[str, dg.ExecuteInProcessResult] = field(default_factory=dict)
    aliases_after: dict[str, dict[str, str | None]] = field(default_factory=dict)
    dataset_frame: pd.DataFrame | None = None
    rollback: Any = None

    @property
    def registry(self):
        return self.platform.resource("registry")

    def step(self, label: str, selection: list[str], config: dict) -> dg.ExecuteInProcessResult:
        result = self.platform.materialize(selection, config)
        self.runs[label] = result
        self.aliases_after[label] = aliases(self.platform)
        if "candidate_model" in materialized(result):
            print(gate_line(label, result))
        return result


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    story = Story(make_platform(tmp_path_factory.mktemp("promotion")))
    story.step("first", TRAINING_SELECTION, run_config(params={"C": 0.0005}))
    story.dataset_frame = stored_output(story.platform, "dataset")
    story.step("better", TRAINING_SELECTION, run_config())
    story.step("worse", TRAINING_SELECTION, run_config(shuffle_labels=True, floors={}))
    story.step("direct", ["champion_model"], {})
    story.step("repro", GATED, run_config())
    job = story.platform.defs.resolve_job_def("rollback")
    story.rollback = job.execute_in_process(instance=story.platform.instance, raise_on_error=False)
    story.aliases_after["rollback"] = aliases(story.platform)
    return story


def candidate(result) -> dict[str, Any]:
    return asset_metadata(result, "candidate_model")


def test_first_model_is_promoted(story):
    result = story.runs["first"]
    assert result.success
    assert materialized(result) == set(TRAINING_SELECTION)
    gate = check_results(result)["beats_champion"]
    assert gate.passed and gate.description == "first model"
    assert check_metadata(result, "beats_champion")["champion_version"] == "none"
    assert candidate(result)["version"] == "1"
    assert story.aliases_after["first"] == {"champion": "1", "previous": None, "challenger": "1"}
    assert check_results(result)["aliases_resolve"].passed


def test_better_candidate_is_promoted_and_previous_kept(story):
    first, better = story.runs["first"], story.runs["better"]
    assert better.success and materialized(better) == set(TRAINING_SELECTION)
    gate = check_metadata(better, "beats_champion")
    assert check_results(better)["beats_champion"].passed
    assert gate["candidate_version"] == "2" and gate["champion_version"] == "1"
    # the champion is rescored afresh on the same holdout: its score is its own recorded holdout AUC
    assert gate["champion_score"] == pytest.approx(candidate(first)["holdout_roc_auc"], abs=1e-5)
    assert gate["candidate_score"] == pytest.approx(candidate(better)["holdout_roc_auc"], abs=1e-5)
    assert gate["margin"] == pytest.approx(gate["candidate_score"] - gate["champion_score"])
    assert gate["margin"] > 0.01, "the weakly regularised default model should clearly win"
    assert story.aliases_after["better"] == {"champion": "2", "previous": "1", "challenger": "2"}
    moves = asset_metadata(better, "champion_model")["alias_moves"]
    assert [(m["alias"], m["from_version"], m["to_version"]) for m in moves] == [
        (PREVIOUS, None, "1"), (CHAMPION, "1", "2")]


def test_worse_candidate_is_blocked_by_beats_champion(story):
    result = story.runs["worse"]
    assert not result.success
    gate = check_results(result)["beats_champion"]
    meta = check_metadata(result, "beats_champion")
    assert not gate.passed and "loses to champion v2" in gate.description
    assert meta["candidate_version"] == "3" and meta["champion_version"] == "2"
    assert meta["candidate_score"] < 0.6 < meta["champion_score"], meta
    assert meta["margin"] < 0
    assert check_results(result)["meets_floor"].passed, "floors were disabled: beats_champion alone blocks"
    assert "champion_model" not in materialized(result)
    assert "model_explanations" not in materialized(result)
    assert "candidate_model" in materialized(result)  # registered as @challenger, never promoted
    assert story.aliases_after["worse"] == {"champion": "2", "previous": "1", "challenger": "3"}
    tags = story.registry.version_info("3")["version_tags"]
    assert tags["gate.beats_champion"] == "failed"


def test_champion_model_alone_refuses_a_candidate_that_failed_its_gate(story):
    result = story.runs["direct"]
    message = step_failure(result, "champion_model")
    assert "refusing to promote churn/3: gate beats_champion failed" in message
    assert materialized(result) == set()
    assert story.aliases_after["direct"] == story.aliases_after["worse"]


def test_retraining_same_data_and_seed_reproduces_metrics(story):
    better, repro = story.runs["better"], story.runs["repro"]
    assert repro.success and "champion_model" not in materialized(repro)
    first_run = story.registry.version_info("2")
    again_run = story.registry.version_info("4")
    assert first_run["run_id"] != again_run["run_id"]
    assert first_run["run_tags"]["dataset_md5"] == again_run["run_tags"]["dataset_md5"]
    assert first_run["run_tags"]["holdout_md5"] == again_run["run_tags"]["holdout_md5"]
    assert first_run["metrics"] == again_run["metrics"]
    assert {k for k in first_run["metrics"]} >= {f"holdout_{m}" for m in ("roc_auc", "accuracy", "f1", "log_loss", "brier")}
    # the gate scores them on the same rows: an exact tie, which passes with zero tolerance
    gate = check_metadata(repro, "beats_champion")
    assert gate["champion_version"] == "2" and gate["margin"] == 0.0
    assert check_results(repro)["beats_champion"].passed
    assert candidate(repro)["holdout_roc_auc"] == candidate(better)["holdout_roc_auc"]


def test_dataset_md5_tag_resolves_through_dvc_to_the_dataset(story):
    dataset_md5 = asset_metadata(story.runs["better"], "dataset")["md5"]
    run_tags = story.registry.version_info("2")["run_tags"]
    assert run_tags["dataset_md5"] == dataset_md5 != "unknown"
    from_dvc = story.platform.resource("versioner").read_table("dataset", md5=run_tags["dataset_md5"])
    pd.testing.assert_frame_equal(from_dvc, story.dataset_frame.reset_index(drop=True), check_like=False)
    pd.testing.assert_frame_equal(from_dvc, generate_churn(ROWS, seed=7))


def test_gate_decision_is_traceable_from_the_champion_version(story):
    result = story.runs["better"]
    gate = check_metadata(result, "beats_champion")
    champion = story.aliases_after["better"]["champion"]
    info = story.registry.version_info(champion)
    run = story.registry.client.get_run(info["run_id"])
    assert run.info.run_id == candidate(result)["run_id"]
    tags = info["version_tags"]
    # data version and holdout hash: version tags, run tags and the assets agree
    holdout_md5 = asset_metadata(result, "holdout_set")["holdout_md5"]
    assert tags["dataset_md5"] == run.data.tags["dataset_md5"] == asset_metadata(result, "dataset")["md5"]
    assert tags["holdout_md5"] == run.data.tags["holdout_hash"] == holdout_md5 == gate["holdout_md5"]
    assert tags["gate.holdout_md5"] == holdout_md5
    holdout = story.platform.resource("versioner").read_table("holdout", md5=holdout_md5)
    assert len(holdout) == int(run.data.params["holdout_rows"])
    # both scores of the gate, as the check reported them
    assert float(tags["gate.candidate_score"]) == pytest.approx(gate["candidate_score"], abs=1e-6)
    assert float(tags["gate.champion_score"]) == pytest.approx(gate["champion_score"], abs=1e-6)
    assert float(tags["gate.margin"]) == pytest.approx(gate["margin"], abs=1e-6)
    assert tags["gate.champion_version"] == gate["champion_version"] == "1"
    assert tags["gate.beats_champion"] == "passed" and tags["gate.meets_floor"] == "passed"
    assert tags["dagster_run_id"] == result.run_id
    # and the promotion's audit entry carries the same decision
    [promotion] = [m for m in story.registry.audit_log() if m.alias == CHAMPION and m.to_version == champion
                   and m.dagster_run_id == result.run_id]
    assert promotion.from_version == "1" and tags["gate.reason"] == promotion.reason
    assert f"{gate['candidate_score']:.4f} vs {gate['champion_score']:.4f}" in promotion.reason


def test_rollback_restores_previous_champion_with_audit_entries(story):
    result = story.rollback
    assert result.success
    assert story.aliases_after["repro"]["champion"] == "2"
    assert story.aliases_after["rollback"]["champion"] == "1"
    assert story.aliases_after["rollback"]["previous"] is None  # consumed: a second rollback has nowhere to go
    assert result.output_for_node("rollback_champion") == {"champion": "1", "rolled_back_from": "2"}
    entries = [m for m in story.registry.audit_log() if m.dagster_run_id == result.run_id]
    assert [(m.alias, m.from_version, m.to_version, m.reason) for m in entries] == [
        (CHAMPION, "2", "1", "manual rollback"), (PREVIOUS, "1", None, "consumed by rollback to 1")]
    # the whole history is on the registered model, oldest first
    champion_moves = [(m.from_version, m.to_version) for m in story.registry.audit_log() if m.alias == CHAMPION]
    assert champion_moves == [(None, "1"), ("1", "2"), ("2", "1")]
    assert registered_versions(story.platform) == ["1", "2", "3", "4"]
