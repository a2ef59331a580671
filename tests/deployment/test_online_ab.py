"""The online A/B gate end to end on real served models: `inference_service` leaves the new champion
as a canary (or shadow) next to stable, live traffic is labelled, and `online_evaluation` promotes,
rolls back or waits. One local deployment (one replica per revision) serves the whole module; the
tests run in order, each starting its own canary next to whatever serves."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlops_assets.data.generator import generate_churn
from mlops_assets.deployment.assets import inference_service
from mlops_assets.deployment.online import online_evaluation
from mlops_assets.loop import deliver_labels, send_traffic
from mlops_assets.serving.backend_local import LocalServingBackend
from tests.conftest import Platform, make_platform, step_failure, restore_environment
from tests.serving.conftest import SEED, train_and_register, write_feature_store

pytestmark = pytest.mark.integration

ENV = {"MLOPS_PROFILE": "local"}
BATCH = 200  # requests between two evaluations
MEASURED: dict = {}  # figures for the report (printed at the end of the module)


@dataclass
class World:
    platform: Platform
    backend: LocalServingBackend
    versions: dict[str, str]
    batches: int = 0
    evaluations: list = field(default_factory=list)

    @property
    def registry(self):
        return self.platform.resource("registry")

    def champion(self) -> str | None:
        return self.registry.version_of("champion")

    def release(self, version: str, ab: dict, percent: int = 50) -> dg.ExecuteInProcessResult:
        """What `champion_model` then `inference_service` do for a new champion: aliases, then the rollout."""
        champion = self.champion()
        if champion != version:
            self.registry.move_alias("previous", champion, "test: next release", "test")
            self.registry.move_alias("champion", version, "test: next release", "test")

        @dg.asset(name="champion_model")
        def champion_model_stub() -> dict:
            return {"version": version}

        config = {"canary_percent": percent, "smoke_requests": 10, "max_p99_ms": 5000.0, "ab": ab}
        return dg.materialize([champion_model_stub, inference_service], resources=self.platform.defs.resources,
                              instance=self.platform.instance, raise_on_error=False,
                              run_config={"ops": {"inference_service": {"config": config}}})

    def evaluate(self) -> tuple[dg.ExecuteInProcessResult, dict]:
        result = dg.materialize([online_evaluation], resources=self.platform.defs.resources,
                                instance=self.platform.instance, raise_on_error=False)
        metadata = {}
        for event in result.get_asset_materialization_events():
            if event.asset_key.path == ["online_evaluation"]:
                metadata = {k: getattr(v, "value", v) for k, v in
                            event.step_materialization_data.materialization.metadata.items()}
        self.evaluations.append(metadata)
        return result, metadata

    def traffic(self, n: int = BATCH):
        """Labelled production traffic (complete rows with their customer id), labels delivered."""
        self.batches += 1
        sent = send_traffic(self.platform.settings, "baseline", n, seed=100 + self.batches, concurrency=4)
        assert sent.failed == 0, sent.errors[:3]
        deliver_labels(self.platform.settings, sent.labels)
        return sent

    def until_decided(self, max_batches: int) -> dict:
        for _ in range(max_batches):
            self.traffic()
            result, metadata = self.evaluate()
            assert result.success or metadata.get("decision") == "rollback", metadata
            if metadata["decision"] != "wait":
                return metadata
        raise AssertionError(f"undecided after {max_batches} batches: {metadata.get('reason')}")

    def state(self) -> dict:
        return self.backend.status()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("ab-home")
    saved = {key: os.environ.get(key) for key in [*ENV, "MLOPS_HOME"]}
    os.environ.update(ENV, MLOPS_HOME=str(home))  # the serving processes resolve the same settings
    # one replica a revision: five rollouts on a shared 2-core machine; requests held up to 3 min
    platform = make_platform(home, serving_replicas=1, serving_hold_s=180.0)
    backend = LocalServingBackend(platform.settings)
    try:
        settings, spec = platform.settings, platform.settings.dataset_spec()
        data = generate_churn(5000, SEED)
        write_feature_store(settings, data)
        shuffled = data.assign(**{spec.target: np.random.default_rng(0).permutation(data[spec.target].to_numpy())})
        versions = {"stable": train_and_register(settings, data, C=1.0),
                    "shuffled": train_and_register(settings, shuffled, C=1.0),  # learns nothing: all "no churn"
                    "equal": train_and_register(settings, data, C=1.0)}  # the same model, a new version
        world = World(platform, backend, versions)
        world.registry.move_alias("champion", versions["stable"], "test: first champion", "test")
        backend.deploy(versions["stable"])
        yield world
    finally:
        backend.stop()
        restore_environment(saved)
        print("\nA/B gate figures:", MEASURED)


@pytest.mark.parametrize("ab, field", [({"mode": "canary", "min_labelled_samples": 0}, "min_labelled_samples"),
                                       ({"mode": "canary", "alpha": 1.5}, "alpha"),
                                       ({"mode": "shadow", "alpha": 0.0}, "alpha")])
def test_an_invalid_ab_config_fails_naming_the_field_and_nothing_serving_changes(world, ab, field):
    before = world.state()
    result = world.release(world.versions["shuffled"], ab)
    message = step_failure(result, "inference_service")
    assert field in message and "nothing serving changed" in message
    after = world.state()
    assert after["revisions"]["canary"] is None and after["online_gate"] is None
    assert after["revisions"]["stable"]["model_version"] == before["revisions"]["stable"]["model_version"]
    world.registry.move_alias("champion", world.versions["stable"], "test: undo", "test")


def test_a_canary_trained_on_shuffled_labels_is_rolled_back_by_the_online_check(world):
    stable, bad = world.versions["stable"], world.versions["shuffled"]
    started = time.monotonic()
    result = world.release(bad, {"mode": "canary", "min_labelled_samples": 50, "alpha": 0.05, "margin": 0.02})
    assert result.success
    state = world.state()
    assert state["revisions"]["canary"]["model_version"] == bad and state["canary_percent"] == 50
    assert state["online_gate"]["min_labelled_samples"] == 50
    decided = world.until_decided(max_batches=10)
    assert decided["decision"] == "rollback" and "significantly worse" in decided["reason"]
    assert decided["accuracy_canary"] < decided["accuracy_stable"]
    state = world.state()
    assert state["revisions"]["canary"] is None and state["revisions"]["stable"]["model_version"] == stable
    assert world.champion() == stable, "@champion not returned to @previous"
    MEASURED["shuffled_rollback"] = {"labelled_canary": decided["n_canary"], "labelled_stable": decided["n_stable"],
                                     "requests": world.batches * BATCH, "seconds": round(time.monotonic() - started, 1),
                                     "canary_start_to_decision_s": decided["elapsed_s"],
                                     "accuracy": (round(decided["accuracy_canary"], 4),
                                                  round(decided["accuracy_stable"], 4))}


def test_the_rollback_is_recorded_and_the_blocking_check_fails(world):
    result, metadata = world.evaluate()  # nothing under evaluation any more
    assert result.success and metadata["decision"] == "none"
    events = world.platform.instance.get_latest_materialization_event(dg.AssetKey("inference_service"))
    assert "online A/B gate rolled back" in events.asset_materialization.description
    champion = world.platform.instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    assert champion.asset_materialization.metadata["champion_version"].value == world.versions["stable"]
    bad_rollback = [e for e in world.evaluations if e.get("decision") == "rollback"]
    assert bad_rollback and bad_rollback[-1]["champion_restored_to"] == world.versions["stable"]


def test_a_label_for_an_unknown_request_id_fails_naming_the_file_and_the_id(world):
    result = world.release(world.versions["equal"], {"mode": "canary", "min_labelled_samples": 300, "margin": 0.05})
    assert result.success
    before = world.state()
    where = deliver_labels(world.platform.settings, {"no-such-request-42": 1})
    try:
        result, _ = world.evaluate()
        message = step_failure(result, "online_evaluation")
        assert "no-such-request-42" in message and where in message
        assert world.state()["revisions"] == before["revisions"] and world.state()["canary_percent"] == 50
    finally:
        os.remove(where)


def test_one_customer_sees_one_revision(world):
    settings, spec = world.platform.settings, world.platform.settings.dataset_spec()
    rows = generate_churn(300, seed=99)[[spec.entity, *spec.features]].drop_duplicates(spec.entity).head(40)
    import httpx

    seen: dict[int, set[str]] = {}
    url = f"{world.backend.endpoint}/v1/models/{settings.model_name}:predict"
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            for row in rows.to_dict("records"):
                answer = client.post(url, json={"instances": [row]}).json()
                seen.setdefault(row[spec.entity], set()).add(answer["revision"])
    assert all(len(revisions) == 1 for revisions in seen.values()), seen
    assert {r for revisions in seen.values() for r in revisions} == {"stable", "canary"}


def test_an_equal_canary_is_promoted_on_non_inferiority_once_the_sample_is_large_enough(world):
    started = time.monotonic()
    world.traffic()
    _, metadata = world.evaluate()
    assert metadata["decision"] == "wait" and "fewer than the 300 needed" in metadata["reason"]
    decided = world.until_decided(max_batches=12)
    assert decided["decision"] == "promote" and "non-inferior" in decided["reason"]
    assert min(decided["n_canary"], decided["n_stable"]) >= 300
    state = world.state()
    assert state["revisions"]["stable"]["model_version"] == world.versions["equal"]
    assert state["revisions"]["canary"] is None and world.champion() == world.versions["equal"]
    MEASURED["equal_promotion"] = {"labelled_canary": decided["n_canary"], "labelled_stable": decided["n_stable"],
                                   "lower_bound": round(decided["lower"], 4),
                                   "canary_start_to_decision_s": decided["elapsed_s"],
                                   "seconds": round(time.monotonic() - started, 1)}


def test_a_small_sample_waits_until_the_maximum_duration_then_rolls_back(world):
    serving = world.versions["equal"]
    result = world.release(world.versions["stable"], {"mode": "canary", "min_labelled_samples": 100_000,
                                                      "max_wait_s": 45})
    assert result.success
    world.traffic(50)
    _, metadata = world.evaluate()
    assert metadata["decision"] == "wait" and world.state()["revisions"]["canary"] is not None
    assert metadata["elapsed_s"] < 45 and "fewer than the 100000 needed" in metadata["reason"]
    started = pd.Timestamp(world.state()["online_gate"]["started_at"]).timestamp()
    time.sleep(max(0.0, started + 46 - time.time()))
    result, metadata = world.evaluate()
    assert metadata["decision"] == "rollback" and "max_wait_s" in metadata["reason"]
    assert world.state()["revisions"]["canary"] is None and world.champion() == serving


def test_shadow_mode_answers_only_from_stable_and_logs_the_challengers_predictions(world):
    from mlops_assets.monitoring.prediction_log import read_prediction_log

    stable, challenger = world.versions["equal"], world.versions["shuffled"]
    result = world.release(challenger, {"mode": "shadow", "min_labelled_samples": 50})
    assert result.success
    state = world.state()
    assert state["mode"] == "shadow" and state["canary_percent"] == 0
    since = pd.Timestamp(state["online_gate"]["started_at"])
    sent = world.traffic(300)
    assert len(sent.labels) == 300
    time.sleep(2)  # the copies go out after the answers
    log, _ = read_prediction_log(world.platform.settings, since, pd.Timestamp.now(tz="UTC"), include_shadow=True)
    clients = log[log["request_id"].isin(sent.labels) & ~log["shadow"]]
    shadows = log[log["request_id"].isin(sent.labels) & log["shadow"]]
    assert set(clients["model_version"].astype(str)) == {stable} and set(clients["revision"]) == {"stable"}
    assert len(clients) == 300
    assert set(shadows["model_version"].astype(str)) == {challenger} and set(shadows["revision"]) == {"canary"}
    assert len(shadows) >= 295, "shadow copies lost"  # at most a handful dropped under load, counted
    served, _ = read_prediction_log(world.platform.settings, since, pd.Timestamp.now(tz="UTC"))
    served = served[served["request_id"].isin(sent.labels)]  # (the smoke test's requests are the canary's)
    assert "shadow" not in served.columns and len(served) == 300
    assert set(served["model_version"].astype(str)) == {stable}, "shadow rows in the default read"
    decided = world.until_decided(max_batches=6)
    assert decided["decision"] == "rollback" and world.champion() == stable
    assert world.state()["revisions"]["canary"] is None
    MEASURED["shadow_rollback"] = {"labelled_canary": decided["n_canary"], "labelled_stable": decided["n_stable"],
                                   "canary_start_to_decision_s": decided["elapsed_s"]}
