"""The Kubernetes API through the official client, against the local API stand-in: discovery,
server-side apply, reads, watches, every API error naming verb and resource, and the three ways to
authenticate (explicit URL + token file, in-cluster service account, kubeconfig)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_assets.deployment.kube_api import KubeApi, KubeApiError, Ref, WaitTimeout, api_client
from mlops_assets.deployment.manifests import render_inference_service
from mlops_assets.settings import get_settings

from .conftest import DISCOVERY, k8s_settings_env

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/mlops/inferenceservices/churn"
ISVC = Ref("serving.kserve.io/v1beta1", "InferenceService", "mlops", "churn")


def manifest(version: int, canary: int = 20) -> dict:
    return render_inference_service(get_settings({}), f"models:/churn/{version}", version,
                                    f"registry.example/mlops-serving:v{version}", canary)


@pytest.fixture
def settings(kube, tmp_path):
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    return get_settings(k8s_settings_env(kube, tmp_path / "home", token))


@pytest.fixture
def api(settings):
    api = KubeApi.from_settings(settings)
    yield api
    api.close()


def ready(obj, reads):
    return {"observedGeneration": obj["metadata"]["generation"], "conditions": [{"type": "Ready", "status": "True"}]}


def test_apply_is_a_server_side_apply_by_one_field_manager_with_the_bearer_token(kube, api):
    applied = api.apply(manifest(1))
    assert kube.calls() == [("PATCH", "isvc")]
    (request,) = kube.requests
    assert request["path"] == PATH
    assert request["query"] == {"fieldManager": ["mlops-deployer"], "force": ["True"]}
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["authorization"] == "Bearer t0ken"
    assert yaml.safe_load(request["body"]) == manifest(1)
    assert applied["metadata"]["generation"] == 1
    # the kind was discovered once, through the API server's discovery documents
    assert set(kube.discovery) <= set(DISCOVERY) and "/apis/serving.kserve.io/v1beta1" in kube.discovery


def test_get_reads_the_object_or_none_when_it_does_not_exist(kube, api):
    assert api.get(ISVC) is None
    kube.seed(manifest(1))
    kube.status_for["inferenceservices"] = ready
    live = api.get(ISVC)
    assert live["metadata"]["annotations"]["mlops/model-version"] == "1"
    assert live["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert kube.calls() == [("GET", "isvc"), ("GET", "isvc")]


def test_wait_watches_the_object_until_the_condition_holds(kube, api):
    kube.seed(manifest(1))
    kube.status_for["inferenceservices"] = lambda obj, reads: {"reads": reads}
    seen = api.wait_for(ISVC, lambda obj: obj["status"]["reads"] == 3, timeout_s=30, what="read thrice")
    assert seen["status"] == {"reads": 3}
    assert kube.calls() == [("WATCH", "isvc")]
    (watch,) = kube.requests
    assert watch["path"] == "/apis/serving.kserve.io/v1beta1/namespaces/mlops/inferenceservices"
    assert watch["query"]["fieldSelector"] == ["metadata.name=churn"]
    assert watch["query"]["timeoutSeconds"] == ["30"]


def test_wait_gives_up_at_the_deadline_with_the_last_state_seen(kube, api):
    kube.seed(manifest(1))
    kube.watch_events = 2
    kube.status_for["inferenceservices"] = lambda obj, reads: {"reads": reads}
    with pytest.raises(WaitTimeout) as timeout:
        api.wait_for(ISVC, lambda obj: False, timeout_s=1, what="ready")
    assert str(timeout.value) == "InferenceService mlops/churn not ready within 1s"
    assert timeout.value.last["status"] == {"reads": 2}
    assert kube.calls() == [("WATCH", "isvc")]  # the server held the watch until its timeout


@pytest.mark.parametrize("code, reason", [(401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"),
                                          (409, "Conflict"), (500, "InternalError"), (503, "ServiceUnavailable")])
def test_every_api_error_names_the_verb_the_resource_and_the_servers_reason(kube, api, code, reason):
    kube.fail[("PATCH", "isvc")] = (code, reason, "inferenceservices.serving.kserve.io \"churn\" says no")
    with pytest.raises(KubeApiError) as error:
        api.apply(manifest(1))
    assert error.value.status == code
    assert str(error.value) == (f"Kubernetes API: apply InferenceService mlops/churn failed: HTTP {code} "
                                f"{reason}: inferenceservices.serving.kserve.io \"churn\" says no")


def test_a_forbidden_read_is_an_error_not_a_missing_object(kube, api):
    kube.fail[("GET", "isvc")] = (403, "Forbidden", "User \"system:serviceaccount:mlops:x\" cannot get")
    with pytest.raises(KubeApiError, match="get InferenceService mlops/churn failed: HTTP 403 Forbidden"):
        api.get(ISVC)


def test_an_unserved_kind_and_an_unreachable_server_are_named(kube, api, tmp_path):
    with pytest.raises(KubeApiError, match="discover example.com/v1 Widget failed: .*CRD installed"):
        api.get(Ref("example.com/v1", "Widget", "mlops", "w"))
    settings = get_settings(k8s_settings_env(kube, tmp_path / "other", tmp_path / "none",
                                             MLOPS_K8S_API="http://127.0.0.1:9"))
    with pytest.raises(KubeApiError, match=r"discover the API groups failed: http://127.0.0.1:9 unreachable"):
        KubeApi.from_settings(settings)


def test_kubeconfig_auth_reaches_the_server_it_names(kube, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "local", "cluster": {"server": kube.url}}],
        "users": [{"name": "me", "user": {"token": "from-kubeconfig"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "local", "user": "me"}}]}))
    settings = get_settings({"MLOPS_HOME": str(tmp_path / "home"), "KUBECONFIG": str(kubeconfig),
                             "MLOPS_K8S_TOKEN_FILE": str(tmp_path / "no-token")})
    api = KubeApi.from_settings(settings)
    api.apply(manifest(1))
    api.close()
    assert kube.requests[0]["authorization"] == "Bearer from-kubeconfig"


def test_in_cluster_auth_uses_the_service_account_token_and_ca(tmp_path):
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    pod_env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    settings = get_settings({"MLOPS_K8S_TOKEN_FILE": str(token), "MLOPS_K8S_CA_FILE": str(ca), **pod_env})
    configuration = api_client(settings).configuration
    assert configuration.host == "https://10.0.0.1:443"
    assert configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer sa-token"  # the scheme is case-insensitive
    assert configuration.ssl_ca_cert == str(ca)


def test_a_token_without_the_pods_service_address_is_named(tmp_path):
    (tmp_path / "token").write_text("sa-token")
    settings = get_settings({"MLOPS_K8S_TOKEN_FILE": str(tmp_path / "token")})
    with pytest.raises(KubeApiError, match="authenticate to the in-cluster API server failed: Service host/port is not set"):
        api_client(settings)


def test_no_way_to_authenticate_is_named(tmp_path):
    settings = get_settings({"KUBECONFIG": str(tmp_path / "missing"), "MLOPS_K8S_TOKEN_FILE": str(tmp_path / "none")})
    with pytest.raises(KubeApiError, match="no MLOPS_K8S_API, no service-account token at .*none, and no usable kubeconfig"):
        api_client(settings)


def test_a_rotated_token_file_is_read_again(kube, api, settings):
    api.apply(manifest(1))
    Path(settings.k8s_token_file).write_text("r0tated\n")
    api.get(ISVC)
    assert [r["authorization"] for r in kube.requests] == ["Bearer t0ken", "Bearer r0tated"]
