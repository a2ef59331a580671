"""`inference_service` against real local KServe processes, and `batch_predictions` offline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.serving.backend_local import LocalServingBackend
from tests.conftest import OFFLINE_SELECTION, check_results, make_platform, materialized, step_failure

SERVE = [*OFFLINE_SELECTION, "inference_service"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    platform = make_platform(tmp_path_factory.mktemp("deploy"))
    backend = LocalServingBackend(platform.settings)
    try:
        first = platform.materialize(SERVE, {"ops": {"dataset": {"config": {"rows": 3_000}},
                                                     "candidate_model": {"config": {"params": {"C": 0.0005}}}}})
        assert first.success, "first deployment failed"
        yield platform, backend, first
    finally:
        backend.stop()


def test_first_deployment_serves_the_champion_at_full_traffic(served):
    platform, backend, first = served
    registry = platform.resource("registry")
    status = backend.status()
    assert status["running"] and str(status["revisions"]["stable"]["model_version"]) == registry.version_of("champion")
    assert check_results(first)["serving_healthy"].passed
    [event] = [e for e in first.get_asset_materialization_events() if e.asset_key.path == ["inference_service"]]
    metadata = event.step_materialization_data.materialization.metadata
    assert metadata["action"].value == "first deployment" and metadata["smoke_test"].value["passed"]


def test_a_canary_that_fails_its_smoke_test_is_rolled_back_and_the_champion_restored(served):
    platform, backend, _ = served
    registry = platform.resource("registry")
    serving_before = registry.version_of("champion")
    # a better model, but a latency budget no server can meet: the canary must fail and roll back
    result = platform.materialize(SERVE, {"ops": {"dataset": {"config": {"rows": 3_000}},
                                                  "inference_service": {"config": {"max_p99_ms": 0.001,
                                                                                    "max_p99_ratio": 0.0}}}})
    assert "rolled back" in step_failure(result, "inference_service")
    assert "inference_service" not in materialized(result)
    assert registry.version_of("champion") == serving_before, "@champion not restored after the failed canary"
    status = backend.status()
    assert str(status["revisions"]["stable"]["model_version"]) == serving_before
    assert not (status["revisions"].get("canary") or {}), "the failed canary still receives traffic"


def test_a_passing_canary_is_promoted_to_full_traffic(served):
    platform, backend, _ = served
    registry = platform.resource("registry")
    old = registry.version_of("champion")
    result = platform.materialize(SERVE, {"ops": {"dataset": {"config": {"rows": 3_000}}}})
    assert result.success
    new = registry.version_of("champion")
    assert new != old
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["inference_service"]]
    assert event.step_materialization_data.materialization.metadata["action"].value == f"promoted over v{old}"
    status = backend.status()
    assert str(status["revisions"]["stable"]["model_version"]) == new and not (status["revisions"].get("canary") or {})


def test_batch_predictions_score_every_entity_with_the_champion(served):
    platform, _, _ = served
    settings, registry = platform.settings, platform.resource("registry")
    result = platform.materialize(["batch_predictions"])
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata
    champion = registry.version_of("champion")
    assert metadata["model_version"].value == champion
    table = platform.resource("versioner").read_table("batch_predictions", md5=metadata["md5"].value)
    spec = settings.dataset_spec()
    dataset = pd.read_parquet(settings.data_repo / "dataset.parquet")
    assert sorted(table[spec.entity]) == sorted(dataset[spec.entity].unique())
    assert set(table["model_version"]) == {champion}
    # the scores are the champion's on each entity's latest snapshot
    latest = dataset.sort_values(spec.timestamp).groupby(spec.entity).tail(1).set_index(spec.entity)
    sample = table.sample(20, random_state=0)
    expected = registry.load_model(champion).predict_proba(latest.loc[sample[spec.entity], spec.features])[:, 1]
    assert np.allclose(sample["score"].to_numpy(), expected)


def test_rollback_job_restores_the_previous_champion_and_serves_it(served):
    platform, backend, _ = served
    registry = platform.resource("registry")
    if not registry.version_of("previous"):  # run alone: promote a second champion first
        assert platform.materialize(SERVE, {"ops": {"dataset": {"config": {"rows": 3_000}}}}).success
    current, previous = registry.version_of("champion"), registry.version_of("previous")
    assert previous and previous != current
    job = platform.defs.resolve_job_def("rollback")
    result = job.execute_in_process(instance=platform.instance, resources=platform.defs.resources)
    assert result.success
    assert registry.version_of("champion") == previous
    assert result.output_for_node("serve_restored_champion")["served"]
    status = backend.status()
    assert str(status["revisions"]["stable"]["model_version"]) == previous and not (status["revisions"].get("canary") or {})
    assert registry.audit_log()[-2].reason == "manual rollback"
