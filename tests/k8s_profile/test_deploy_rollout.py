"""The ``inference_service`` asset in the k8s profile, against a local stand-in for the Kubernetes API
and one for the InferenceService's URLs (real V1 prediction requests): the exact requests of a canary
that is promoted, a canary that fails its smoke test, an InferenceService that never becomes ready,
and a first deployment; the health check; the GitOps mode."""

from __future__ import annotations

import io
import subprocess
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlops_assets.deployment import k8s
from mlops_assets.deployment.assets import RolloutConfig, inference_service
from mlops_assets.deployment.rollout import roll_out
from mlops_assets.settings import get_settings
from tests.conftest import step_failure

from .conftest import k8s_env

pytestmark = pytest.mark.integration

IMAGE = "registry.example/mlops-assets:1.2.3"
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml-prod/inferenceservices/churn"
GET, PATCH = ("GET", PATH), ("PATCH", PATH)
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


@pytest.fixture
def fake_time(monkeypatch):
    """The rollout's polling on a fake clock: each sleep advances it, so poll counts are exact."""
    now = {"t": 0.0}
    original = k8s.client_from_settings

    def client_on_fake_time(settings, **kwargs):
        return original(settings, sleep=lambda s: now.__setitem__("t", now["t"] + s),
                        clock=lambda: now["t"], **kwargs)

    monkeypatch.setattr(k8s, "client_from_settings", client_on_fake_time)
    return now


@pytest.fixture
def settings(tmp_path, s3_server, bucket, kube, fake_time):
    """k8s settings pointing at the stand-ins; the offline store in (moto) S3 holds the entity ids."""
    import boto3

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    settings = get_settings(k8s_env(
        tmp_path / "home", bucket, MLOPS_S3_ENDPOINT_URL=s3_server, MLOPS_K8S_API=kube.url,
        MLOPS_K8S_TOKEN_FILE=str(token), MLOPS_K8S_CA_FILE=str(tmp_path / "no-ca.crt"),
        MLOPS_READY_TIMEOUT_S="3", MLOPS_READY_POLL_S="1"))
    table = io.BytesIO()
    pd.DataFrame({"customer_id": ENTITY_IDS + ENTITY_IDS, "tenure": range(6)}).to_parquet(table)
    boto3.client("s3", endpoint_url=s3_server).put_object(
        Bucket=bucket, Key="feast/churn_features.parquet", Body=table.getvalue())
    return settings


def manifest(settings, version: int, canary: int) -> dict:
    return k8s.render_inference_service(settings, f"models:/churn/{version}", version, IMAGE, canary)


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
        resources={"settings": settings, "registry": registry},
        run_config={"ops": {"inference_service": {"config": RolloutConfig(
            smoke_requests=smoke_requests, canary_percent=20).model_dump()}}},
        raise_on_error=False)


def applied(request: dict) -> dict:
    assert request["method"] == "PATCH" and request["path"] == PATH
    assert request["query"] == {"fieldManager": ["mlops-deployer"], "force": ["true"]}
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
    kube.status_for = lambda obj, polls: status_from(service, obj)
    service.versions = {"latest": "2", "prev": "1", "main": "1"}

    result = deploy(settings, RegistryStub(previous="1"), champion="2")
    assert result.success

    # read the live object, apply the canary, see it ready at 20%, (smoke), promote, see 100%
    assert kube.calls() == [GET, PATCH, GET, PATCH, GET]
    assert {r["authorization"] for r in kube.requests} == {"Bearer t0ken"}
    assert applied(kube.requests[1]) == manifest(settings, 2, canary=20)
    assert applied(kube.requests[3]) == manifest(settings, 2, canary=100)
    canary = applied(kube.requests[1])["spec"]["predictor"]["containers"][0]
    assert canary["image"] == IMAGE
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
    kube.status_for = lambda obj, polls: status_from(service, obj)
    service.versions = {"latest": "1", "prev": "1", "main": "1"}  # the new revision answers as v1
    registry = RegistryStub(previous="1")

    result = deploy(settings, registry, champion="2", smoke_requests=3)
    assert not result.success
    assert kube.calls() == [GET, PATCH, GET, PATCH]
    assert applied(kube.requests[3]) == k8s.with_canary_percent(previous, 100)  # the old spec, all traffic
    assert smoke_requests_seen(service) == [("POST", "latest", PREDICT, 3)] * 3
    failure = step_failure(result, "inference_service")
    assert "smoke test of the canary revision" in failure
    assert "model version 1, expected 2" in failure
    assert len(registry.rollbacks) == 1 and "canary of v2 failed" in registry.rollbacks[0]


def test_never_ready_inference_service_rolls_back_and_fails_with_the_status_reason(settings, kube, service):
    previous = manifest(settings, 1, canary=100)
    kube.seed(previous)
    kube.status_for = lambda obj, polls: (
        status_from(service, obj) if obj["metadata"]["generation"] == 1
        else status_from(service, obj, ready=False, reason="RevisionFailed"))
    registry = RegistryStub(previous="1")

    result = deploy(settings, registry, champion="2")
    assert not result.success
    # apply, polls at t = 0, 1, 2, 3 s against MLOPS_READY_TIMEOUT_S=3, then the rollback apply
    assert kube.calls() == [GET, PATCH, GET, GET, GET, GET, PATCH]
    assert applied(kube.requests[1]) == manifest(settings, 2, canary=20)
    assert applied(kube.requests[-1]) == k8s.with_canary_percent(previous, 100)
    assert service.requests == []  # never smoke-tested
    failure = step_failure(result, "inference_service")
    assert "rollout of v2 rolled back" in failure
    assert "Ready: RevisionFailed (Revision churn-predictor-00002 failed: image pull backoff)" in failure
    assert "within 3s" in failure and "rolled back to the previous spec" in failure
    assert registry.rollbacks and "RevisionFailed" in registry.rollbacks[0]


def test_first_deployment_goes_straight_to_all_traffic_and_is_smoke_tested(settings, kube, service):
    kube.status_for = lambda obj, polls: status_from(service, obj)
    service.versions = {"main": "1"}

    result = deploy(settings, RegistryStub(previous=None), champion="1", smoke_requests=2)
    assert result.success
    assert kube.calls() == [GET, PATCH, GET]
    assert applied(kube.requests[1]) == manifest(settings, 1, canary=100)
    assert smoke_requests_seen(service) == [("POST", "main", PREDICT, 3)] * 2
    assert materialization(result)["action"] == "first deployment"


def test_champion_already_at_full_traffic_is_only_smoke_tested(settings, kube, service):
    kube.seed(manifest(settings, 3, canary=100))
    kube.status_for = lambda obj, polls: status_from(service, obj)
    service.versions = {"main": "3"}

    result = deploy(settings, RegistryStub(previous="2"), champion="3", smoke_requests=2)
    assert result.success
    assert kube.calls() == [GET]  # nothing applied
    assert smoke_requests_seen(service) == [("POST", "main", PREDICT, 1)] * 2
    assert materialization(result)["action"] == "unchanged"


def test_health_reads_the_live_status_and_probes_the_url(settings, kube, service):
    from mlops_assets.deployment.rollout import serving_health

    kube.seed(manifest(settings, 2, canary=20))
    kube.status_for = lambda obj, polls: status_from(service, obj)
    service.versions = {"main": "2"}
    mid = serving_health(settings, "2")
    assert not mid["healthy"] and mid["canary_percent"] == 20
    assert mid["summary"] == "ml-prod/churn is mid-rollout: latest revision at 20% of traffic"

    kube.seed(manifest(settings, 2, canary=100))
    health = serving_health(settings, "2")
    assert health == {"healthy": True, "summary": f"serving v2 at {service.url('main')}",
                      "serving_version": "2", "champion": "2", "endpoint": service.url("main"),
                      "canary_percent": 0}
    assert service.requests[-1]["method"] == "GET" and service.requests[-1]["path"] == "/v1/models/churn"
    stale = serving_health(settings, "3")
    assert not stale["healthy"] and stale["summary"] == "ml-prod/churn serves v2, but @champion is v3"


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_gitops_mode_commits_and_pushes_the_release_instead_of_calling_the_api(tmp_path, kube):
    remote, repo = tmp_path / "remote.git", tmp_path / "checkout"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(repo))
    git(repo, "config", "user.email", "deployer@example.invalid")
    git(repo, "config", "user.name", "deployer")
    git(repo, "commit", "-q", "--allow-empty", "-m", "init")
    release = repo / "deploy" / "kserve" / "overlays" / "prod" / "release.yaml"
    settings = get_settings(k8s_env(tmp_path / "home", MLOPS_DEPLOY_MODE="gitops", MLOPS_GITOPS_PATH=str(release),
                                    MLOPS_GITOPS_REMOTE="origin", MLOPS_K8S_API=kube.url))
    config = RolloutConfig(canary_percent=20)

    result = roll_out(settings, "4", config, log=lambda message: None)
    assert kube.requests == []
    assert result["revision"] == git(repo, "rev-parse", "HEAD") == git(remote, "rev-parse", "HEAD")
    assert git(repo, "log", "-1", "--format=%s") == "deploy(churn): v4 at 20% canary"
    assert result["action"] == "committed deploy/kserve/overlays/prod/release.yaml for Argo CD, pushed to origin"
    assert (result["model_version"], result["endpoint"]) == ("4", None)
    assert yaml.safe_load(release.read_text()) == k8s.release_patch(
        manifest(settings, 4, canary=20), "models:/churn/4", "4", IMAGE, 20)

    again = roll_out(settings, "4", config, log=lambda message: None)
    assert again["action"] == "unchanged (release already committed), pushed to origin"
    assert again["revision"] == result["revision"]
