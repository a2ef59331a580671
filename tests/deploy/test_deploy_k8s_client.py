"""The deploy client against a local stand-in for the Kubernetes API: exact requests, status reactions."""

from __future__ import annotations

import itertools

import pytest
import yaml

from mlops_assets.deployment import k8s
from mlops_assets.settings import get_settings

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/mlops/inferenceservices/churn"
GET, PATCH = ("GET", PATH), ("PATCH", PATH)


def manifest(version: int, canary: int = 20) -> dict:
    return k8s.render_inference_service(get_settings({}), f"models:/churn/{version}", version,
                                        f"registry.example/mlops-serving:v{version}", canary)


def status(generation: int, ready: bool = True, percent: int = 100, reason: str | None = None) -> dict:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    if reason:
        condition.update(reason=reason, message="Revision churn-predictor-00002 failed: image pull backoff")
    traffic = [{"revisionName": "churn-new", "latestRevision": True, "percent": percent}]
    if percent < 100:
        traffic.append({"revisionName": "churn-old", "latestRevision": False, "percent": 100 - percent})
    return {"observedGeneration": generation, "conditions": [condition],
            "components": {c: {"traffic": traffic} for c in ("predictor", "transformer")}}


@pytest.fixture
def client(kube):
    ticks = itertools.count()
    fake_time = {"now": 0.0}

    def sleep(seconds):
        fake_time["now"] += seconds
        next(ticks)

    api = k8s.KServeK8sClient(kube.url, token="t0ken", timeout_s=3, poll_interval_s=1,
                              sleep=sleep, clock=lambda: fake_time["now"])
    yield api
    api.close()


def assert_apply(request: dict, expected: dict) -> None:
    assert request["method"] == "PATCH" and request["path"] == PATH
    assert request["query"] == {"fieldManager": ["mlops-deployer"], "force": ["true"]}
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["authorization"] == "Bearer t0ken"
    assert yaml.safe_load(request["body"]) == expected


def test_first_deploy_applies_then_waits_for_all_traffic_on_the_only_revision(kube, client):
    kube.status_for = lambda obj, polls: status(obj["metadata"]["generation"], percent=100)
    new = manifest(1)
    result = client.deploy_canary(new)
    assert kube.calls() == [GET, PATCH, GET]
    assert_apply(kube.requests[1], new)
    assert result.namespace == "mlops" and result.name == "churn"


def test_canary_is_applied_and_accepted_once_ready_at_its_share(kube, client):
    kube.seed(manifest(1, canary=100))
    # the first poll still reports the old generation's Ready; the second the new revision at 20%
    kube.status_for = lambda obj, polls: (status(1) if polls == 1
                                          else status(obj["metadata"]["generation"], percent=20))
    new = manifest(2, canary=20)
    result = client.deploy_canary(new)
    assert kube.calls() == [GET, PATCH, GET, GET]
    assert_apply(kube.requests[1], new)
    assert result.status["components"]["predictor"]["traffic"][0]["percent"] == 20


def test_not_ready_is_polled_until_ready(kube, client):
    kube.seed(manifest(1, canary=100))
    kube.status_for = lambda obj, polls: status(obj["metadata"]["generation"], ready=polls >= 3, percent=20)
    client.deploy_canary(manifest(2))
    assert kube.calls() == [GET, PATCH, GET, GET, GET]


def test_timeout_rolls_back_to_the_previous_spec_and_fails_with_the_status_reason(kube, client):
    old = manifest(1, canary=100)
    kube.seed(old)
    kube.status_for = lambda obj, polls: status(obj["metadata"]["generation"], ready=False, percent=20,
                                                reason="RevisionFailed")
    with pytest.raises(k8s.DeploymentError) as failure:
        client.deploy_canary(manifest(2))
    message = str(failure.value)
    assert "RevisionFailed" in message and "image pull backoff" in message and "rolled back" in message
    # apply, 4 polls (t = 0, 1, 2, 3 s against a 3 s timeout), then the rollback apply
    assert kube.calls() == [GET, PATCH, GET, GET, GET, GET, PATCH]
    rollback = yaml.safe_load(kube.requests[-1]["body"])
    assert rollback == k8s.with_canary_percent(old, 100)  # previous spec, no server-owned fields
    assert "status" not in rollback and "managedFields" not in rollback["metadata"]


def test_timeout_on_first_deploy_fails_without_anything_to_roll_back_to(kube, client):
    kube.status_for = lambda obj, polls: {}
    with pytest.raises(k8s.DeploymentError, match="no status conditions reported"):
        client.deploy_canary(manifest(1))
    assert kube.calls() == [GET, PATCH, GET, GET, GET, GET]


def test_promotion_sends_all_traffic_to_the_new_revision(kube, client):
    kube.seed(manifest(2, canary=20))
    kube.status_for = lambda obj, polls: status(obj["metadata"]["generation"],
                                                percent=obj["spec"]["predictor"]["canaryTrafficPercent"])
    client.promote(manifest(2, canary=20))
    assert kube.calls() == [PATCH, GET]
    assert_apply(kube.requests[0], manifest(2, canary=100))


def test_explicit_rollback_reapplies_the_previous_spec_at_full_traffic(kube, client):
    previous = manifest(1, canary=20)
    live = {**previous, "metadata": {**previous["metadata"], "resourceVersion": "9", "uid": "x",
                                     "managedFields": [{}]}, "status": status(1)}
    client.rollback(live)
    assert kube.calls() == [PATCH]
    assert_apply(kube.requests[0], manifest(1, canary=100))


def test_api_errors_surface_with_their_http_status(kube, client):
    kube.fail_with = (403, {"kind": "Status", "reason": "Forbidden",
                            "message": "inferenceservices is forbidden"})
    with pytest.raises(k8s.DeploymentError, match="HTTP 403.*forbidden"):
        client.deploy_canary(manifest(1))
    assert kube.calls() == [GET]
