"""The online A/B gate's statistics and policy, and sticky routing, without servers."""

from __future__ import annotations

import pytest

from mlops_assets.deployment.ab_test import ABConfig, compare, decide, policy_from
from mlops_assets.serving.revision import Revision, Router
from mlops_assets.serving.routing import canary_bucket, sticky_is_canary

POLICY = ABConfig(mode="canary", min_labelled_samples=100, alpha=0.05, margin=0.05, max_wait_s=3600)


def test_a_clearly_worse_canary_is_rolled_back():
    decision = decide(POLICY, compare(70, 100, 82, 100, POLICY.alpha), elapsed_s=60)
    assert decision.action == "rollback" and "significantly worse" in decision.reason
    assert decision.comparison.upper < 0


def test_an_equal_canary_waits_on_a_small_sample_and_is_promoted_on_a_large_one():
    assert decide(POLICY, compare(160, 200, 160, 200, POLICY.alpha), 60).action == "wait"
    decision = decide(POLICY, compare(800, 1000, 800, 1000, POLICY.alpha), 60)
    assert decision.action == "promote" and decision.comparison.lower > -POLICY.margin


def test_too_few_labels_waits_then_rolls_back_at_the_maximum_duration():
    comparison = compare(10, 12, 11, 12, POLICY.alpha)
    assert decide(POLICY, comparison, elapsed_s=3599).action == "wait"
    late = decide(POLICY, comparison, elapsed_s=3600)
    assert late.action == "rollback" and "max_wait_s" in late.reason


def test_no_labels_on_one_side_waits_without_an_interval():
    comparison = compare(0, 0, 50, 60, POLICY.alpha)
    assert comparison.lower is None and decide(POLICY, comparison, 1).action == "wait"


@pytest.mark.parametrize("field, value", [("min_labelled_samples", 0), ("alpha", 0.0), ("alpha", 1.0),
                                          ("alpha", 1.5), ("margin", -0.1), ("max_wait_s", 0)])
def test_invalid_config_names_the_field(field, value):
    config = ABConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        config.checked()
    with pytest.raises(ValueError, match=field):
        policy_from({**POLICY.policy(), field: value})


def test_the_bucket_is_stable_and_the_split_close_to_the_weight():
    assert canary_bucket(12345) == canary_bucket(12345) == canary_bucket("12345")
    share = sum(sticky_is_canary(i, 20) for i in range(20_000)) / 20_000
    assert 0.19 < share < 0.21
    # raising the weight only moves customers to the canary
    assert all(sticky_is_canary(i, 50) for i in range(5_000) if sticky_is_canary(i, 20))


def test_router_is_sticky_by_entity_and_weighted_without_one():
    router = Router()
    stable, canary = Revision("stable", "1", [], "t"), Revision("canary", "2", [], "t")
    router.set(stable, canary, 30)
    for entity in range(200):
        first = router.route(entity)
        assert all(router.route(entity) is first for _ in range(5))
    assert sum(router.route() is canary for _ in range(100)) == 30


def test_shadow_mode_answers_from_stable_and_names_the_challenger():
    router = Router()
    stable, canary = Revision("stable", "1", [], "t"), Revision("canary", "2", [], "t")
    router.set(stable, canary, 20, mode="shadow")
    assert router.canary_percent == 0 and not router.split
    assert all(router.route(entity) is stable for entity in range(100)) and router.route() is stable
    assert router.shadow() is canary


class _Backend:
    """Just what the sensor asks of a serving backend."""

    def __init__(self, gate):
        self.gate = gate

    def online_gate(self):
        return self.gate


def test_the_sensor_judges_only_while_a_canary_is_under_evaluation():
    import dagster as dg

    from mlops_assets.deployment.online import build_online_gate_sensor, online_evaluation_job

    instance = dg.DagsterInstance.ephemeral()
    job = online_evaluation_job("churn")
    idle = build_online_gate_sensor(job, _Backend(None), "churn")(dg.build_sensor_context(instance=instance))
    assert not idle.run_requests and "no canary" in idle.skip_reason.skip_message
    gate = {"canary_version": "7", "started_at": "2026-11-29T18:00:00+00:00"}
    sensor = build_online_gate_sensor(job, _Backend(gate), "churn")
    assert sensor.name == "churn_online_gate_sensor" and sensor.job_name == "churn_online_evaluation_job"
    busy = sensor(dg.build_sensor_context(instance=instance))
    [request] = busy.run_requests
    assert request.run_key.startswith("7@2026-11-29T18:00:00+00:00#") and request.tags["mlops/canary_version"] == "7"
    assert request.tags["mlops/model"] == "churn"
