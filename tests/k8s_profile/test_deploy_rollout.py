"""The ``inference_service`` asset and the rollback job in the k8s profile (the KServe backend, through
the official client), against a local stand-in for the Kubernetes API and one for the
InferenceService's URLs (real V1 prediction requests): the exact requests of a canary that is
promoted, a canary that fails its smoke test, an InferenceService that never becomes ready, a first
deployment, a 403; the health check."""

from __future__ import annotations

import io
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlops_assets.deployment.assets import RolloutConfig, inference_service
from mlops_assets.deployment.manifests import render_inference_service, with_canary_percent
from mlops_assets.deployment.rollback import serve_restored_champion
from mlops_assets.resources import serving_backend
from mlops_assets.settings import get_settings
from tests.conftest import step_failure

from .conftest import SERVING_IMAGE, k8s_env

pytestmark = pytest.mark.integration

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml-prod/inferenceservices/churn"
GET, PATCH, WATCH = ("GET", "isvc"), ("PATCH", "isvc"), ("WATCH", "isvc")
ENTITY_IDS = [101, 102, 103]
PREDICT = "/v1/models/churn:predict"


class RegistryStub:
    """The registry as the asset uses it on failure: is there a @previous, and move @champion back."""

    def __init__(self, previous: str | None, champion: str | None = None):
        self.aliases = {"previous": previous, "champion": champion}
        self.rollbacks: list[str] = []

    def version_of(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def rollback(self, dagster_run_id: str, reason: str):
        self.rollbacks.append(reason)
        self.aliases.update(champion=self.aliases["previous"], previous=None)
        return [SimpleNamespace(to_version=self.aliases["champion"])]


def make_settings(tmp_path, s3_server: str, bucket: str, kube, **extra: str):
    """k8s settings pointing at the stand-ins; the offline store in (moto) S3 holds the entity ids."""
    import boto3

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    settings = get_settings(k8s_env(
        tmp_path / "home", bucket, MLOPS_S3_ENDPOINT_URL=s3_server, MLOPS_K8S_API=kube.url,
        MLOPS_K8S_TOKEN_FILE=str(token), MLOPS_K8S_CA_FILE=str(tmp_path / "no-ca.crt"),
        MLOPS_READY_TIMEOUT_S="1", **extra))
    table = io.BytesIO()
    pd.DataFrame({"customer_id": ENTITY_IDS + ENTITY_IDS, "tenure": range(6)}).to_parquet(table)
    boto3.client("s3", endpoint_url=s3_server).put_object(
        Bucket=bucket, Key="feast/churn_features.parquet", Body=table.getvalue())
    return settings


@pytest.fixture
def settings(tmp_path, s3_server, bucket, kube):
    return make_settings(tmp_path, s3_server, bucket, kube)


def manifest(settings, version: int, canary: int) -> dict:
    return render_inference_service(settings, f"models:/churn/{version}", version, SERVING_IMAGE, canary)


def status_from(service, obj: dict, ready: bool = True, reason: str | None = None) -> dict:
    """What KServe reports for ``obj`` (tag routing on): the latest revision at its canary share."""
    generation = obj["metadata"]["generation"]
    percent = obj["spec"]["predictor"].get("canaryTrafficPercent", 100)
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    if reason:
        condition.update(reason=reason, message="Revision churn-predictor-00002 failed: image pull backoff")
    traffic = [{"tag": "latest", "latestRevision": True, "percent": percent, "url": service.url("latest"),
                "revisionName": f"churn-predictor-0000{generation}"}]
    if percent < 100:
        traffic.append({"tag": "prev", "latestRevision": False, "percent": 100 - percent,
                        "url": service.url("prev"), "revisionName": "churn-predictor-00001"})
    return {"observedGeneration": generation, "url": service.url("main"), "conditions": [condition],
            "components": {c: {"traffic": traffic, "latestReadyRevision": f"churn-{c}-0000{generation}"}
                           for c in ("predictor", "transformer")}}


def deploy(settings, registry: RegistryStub, champion: str, smoke_requests: int = 5) -> dg.ExecuteInProcessResult:
    registry.aliases["champion"] = champion  # champion_model has just promoted it

    @dg.asset(name="champion_model")
    def champion_stub() -> dict:
        return {"version": champion}

    return dg.materialize(
        [champion_stub, inference_service], selection=["inference_service", "champion_model"],
        resources={"serving": serving_backend(settings), "registry": registry},
        run_config={"ops": {"inference_service": {"config": RolloutConfig(
            smoke_requests=smoke_requests, canary_percent=20).model_dump()}}},
        raise_on_error=False)


def applied(request: dict) -> dict:
    assert (request["verb"], request["path"]) == ("PATCH", PATH)
    assert request["query"] == {"fieldManager": ["mlops-deployer"], "force": ["True"]}
    assert request["content_type"] == "application/apply-patch+yaml"
    return yaml.safe_load(request["body"])


def smoke_requests_seen(service) -> list[tuple]:
    return [(r["method"], r["route"], r["path"], r["after_api_requests"]) for r in service.requests]


def materialization(result) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey("inference_service")]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_canary_is_applied_smoke_tested_through_its_url_then_promoted(settings, kube, service):
    kube.seed(manifest(settings, 1, canary=100))
    kube.status_for["inferenceservices"] = lambda obj, polls: status_from(service, obj)
    service.versions = {"latest": "2", "prev": "1", "main": "1"}

    result = deploy(settings, RegistryStub(previous="1"), champion="2")
    assert result.success

    # read the live object, apply the canary, watch it reach 20%, (smoke), promote, watch it reach 100%
    assert kube.calls() == [GET, PATCH, WATCH, PATCH, WATCH]
    assert {r["authorization"] for r in kube.requests} == {"Bearer t0ken"}
    assert applied(kube.requests[1]) == manifest(settings, 2, canary=20)
    assert applied(kube.requests[3]) == manifest(settings, 2, canary=100)
    canary = applied(kube.requests[1])["spec"]["predictor"]["containers"][0]
    assert canary["image"] == SERVING_IMAGE
    assert {"name": "MLOPS_MODEL_URI", "value": "models:/churn/2"} in canary["env"]

    # 5 V1 predictions to the canary's own URL, all between "ready at 20%" and the promotion
    assert smoke_requests_seen(service) == [("POST", "latest", PREDICT, 3)] * 5
    assert [r["body"] for r in service.requests] == [
        {"instances": [{"customer_id": i}]} for i in (101, 102, 103, 101, 102)]

    meta = materialization(result)
    assert meta["action"] == "promoted over v1" and meta["model_version"] == "2"
    assert meta["endpoint"] == service.url("main") and meta["revision"] == "stable"
    smoke = meta["smoke_test"]
    assert (smoke["passed"], smoke["requests"], smoke["failed_requests"], smoke["url"]) == (
        True, 5, 0, service.url("latest"))


def test_canary_failing_its_smoke_test_is_rolled_back(settings, kube, service):
    previous = manifest(settings, 1, canary=100)
    kube.seed(previous)
    kube.status_for["inferenceservices"] = lambda obj, polls: status_from(service, obj)
    service.versions = {"latest": "1", "prev": "1", "main": "1"}  # the new revision answers as v1
    registry = RegistryStub(previous="1")

    result = deploy(settings, registry, champion="2", smoke_requests=3)
    assert not result.success
    assert kube.calls() == [GET, PATCH, WATCH, PATCH]
    assert applied(kube.requests[3]) == with_canary_percent(previous, 100)  # the old spec, all traffic
    assert smoke_requests_seen(service) == [("POST", "latest", PREDICT, 3)] * 3
    failure = step_failure(result, "inference_service")
    assert "smoke test of the canary revision" in failure
    assert "model version 1, expected 2" in failure
    assert len(registry.rollbacks) == 1 and "canary of v2 failed" in registry.rollbacks[0]


def test_never_ready_inference_service_rolls_back_and_fails_with_the_status_reason(settings, kube, service):
    previous = manifest(settings, 1, canary=100)
    kube.seed(previous)
    kube.status_for["inferenceservices"] = lambda obj, polls: (
        status_from(service, obj) if obj["metadata"]["generation"] == 1
        else status_from(service, obj, ready=False, reason="RevisionFailed"))
    registry = RegistryStub(previous="1")

    result = deploy(settings, registry, champion="2")
    assert not result.success
    # apply, one watch the server holds until MLOPS_READY_TIMEOUT_S=1, then the rollback apply
    assert kube.calls() == [GET, PATCH, WATCH, PATCH]
    assert applied(kube.requests[1]) == manifest(settings, 2, canary=20)
    assert applied(kube.requests[-1]) == with_canary_percent(previous, 100)
    assert service.requests == []  # never smoke-tested
    failure = step_failure(result, "inference_service")
    assert "rollout of v2 rolled back" in failure
    assert "Ready: RevisionFailed (Revision churn-predictor-00002 failed: image pull backoff)" in failure
    assert "within 1s" in failure and "rolled back to the previous spec" in failure
    assert registry.rollbacks and "RevisionFailed" in registry.rollbacks[0]


def test_first_deployment_goes_straight_to_all_traffic_and_is_smoke_tested(settings, kube, service):
    kube.status_for["inferenceservices"] = lambda obj, polls: status_from(service, obj)
    service.versions = {"main": "1"}

    result = deploy(settings, RegistryStub(previous=None), champion="1", smoke_requests=2)
    assert result.success
    assert kube.calls() == [GET, PATCH, WATCH]
    assert applied(kube.requests[1]) == manifest(settings, 1, canary=100)
    assert smoke_requests_seen(service) == [("POST", "main", PREDICT, 3)] * 2
    assert materialization(result)["action"] == "first deployment"


def test_champion_already_at_full_traffic_is_only_smoke_tested(settings, kube, service):
    kube.seed(manifest(settings, 3, canary=100))
    kube.status_for["inferenceservices"] = lambda obj, polls: status_from(service, obj)
    service.versions = {"main": "3"}

    result = deploy(settings, RegistryStub(previous="2"), champion="3", smoke_requests=2)
    assert result.success
    assert kube.calls() == [GET]  # nothing applied
    assert smoke_requests_seen(service) == [("POST", "main", PREDICT, 1)] * 2
    assert materialization(result)["action"] == "unchanged"


def test_health_reads_the_live_status_and_probes_the_url(settings, kube, service):
    serving_health = serving_backend(settings).health
    kube.seed(manifest(settings, 2, canary=20))
    kube.status_for["inferenceservices"] = lambda obj, polls: status_from(service, obj)
    service.versions = {"main": "2"}
    mid = serving_health("2")
    assert not mid["healthy"] and mid["canary_percent"] == 20
    assert mid["summary"] == "ml-prod/churn is mid-rollout: latest revision at 20% of traffic"

    kube.seed(manifest(settings, 2, canary=100))
    health = serving_health("2")
    assert health == {"healthy": True, "summary": f"serving v2 at {service.url('main')}",
                      "serving_version": "2", "champion": "2", "endpoint": service.url("main"),
                      "canary_percent": 0}
    assert service.requests[-1]["method"] == "GET" and service.requests[-1]["path"] == "/v1/models/churn"
    stale = serving_health("3")
    assert not stale["healthy"] and stale["summary"] == "ml-prod/churn serves v2, but @champion is v3"


def test_health_names_a_refused_read(settings, kube):
    kube.fail[("GET", "isvc")] = (403, "Forbidden", "cannot get inferenceservices")
    health = serving_backend(settings).health("2")
    assert not health["healthy"]
    assert health["summary"] == ("Kubernetes API: get InferenceService ml-prod/churn failed: "
                                 "HTTP 403 Forbidden: cannot get inferenceservices")


def test_a_refused_read_fails_the_rollout_naming_resource_and_verb(settings, kube, service):
    kube.fail[("GET", "isvc")] = (403, "Forbidden", "User cannot get inferenceservices in ml-prod")
    registry = RegistryStub(previous="1")
    result = deploy(settings, registry, champion="2")
    assert not result.success
    assert kube.calls() == [GET]
    failure = step_failure(result, "inference_service")
    assert "get InferenceService ml-prod/churn failed: HTTP 403 Forbidden: User cannot get" in failure


def rollback_job():
    @dg.op(name="rollback_champion")
    def moved() -> dict:
        return {"champion": "1", "rolled_back_from": "2"}

    @dg.job
    def rollback():
        serve_restored_champion(moved())

    return rollback


def test_the_rollback_job_fails_loudly_when_the_api_refuses_to_say_what_serves(settings, kube, service):
    kube.seed(manifest(settings, 2, canary=100))
    kube.fail[("GET", "isvc")] = (403, "Forbidden", "cannot get inferenceservices")
    result = rollback_job().execute_in_process(resources={"serving": serving_backend(settings)},
                                               raise_on_error=False)
    assert not result.success
    assert kube.calls() == [GET]  # nothing applied: a 403 is not "nothing is serving"
    failure = step_failure(result, "serve_restored_champion")
    assert "@champion moved to v1, but what serves is unknown" in failure
    assert "HTTP 403 Forbidden: cannot get inferenceservices" in failure


def test_the_rollback_job_rolls_the_restored_champion_out(settings, kube, service):
    kube.seed(manifest(settings, 2, canary=100))
    kube.status_for["inferenceservices"] = lambda obj, reads: status_from(service, obj)
    service.versions = {"latest": "1", "prev": "2", "main": "2"}
    result = rollback_job().execute_in_process(resources={"serving": serving_backend(settings)},
                                               run_config={}, raise_on_error=False)
    assert result.success, step_failure(result, "serve_restored_champion")
    assert kube.calls() == [GET, GET, PATCH, WATCH, PATCH, WATCH]  # what serves? then a canary of v1
    assert applied(kube.requests[2]) == manifest(settings, 1, canary=20)
    assert applied(kube.requests[4]) == manifest(settings, 1, canary=100)
    assert result.output_for_node("serve_restored_champion")["action"] == "promoted over v2"


def test_a_refused_apply_fails_the_step_naming_it_and_the_undo_is_attempted(settings, kube, service):
    kube.seed(manifest(settings, 1, canary=100))
    kube.status_for["inferenceservices"] = lambda obj, reads: status_from(service, obj)
    kube.fail[("PATCH", "isvc")] = (409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl\"")
    result = deploy(settings, RegistryStub(previous="1"), champion="2")
    assert not result.success
    assert kube.calls() == [GET, PATCH, PATCH]  # the canary, then the re-apply of the previous spec
    failure = step_failure(result, "inference_service")
    assert "apply InferenceService ml-prod/churn failed: HTTP 409 Conflict: Apply failed with 1 conflict" in failure
    assert "undoing the rollout failed too" in failure
    assert service.requests == []
