"""deploy/sink: the sink's Deployment + Service validate, and the KServe logger URL reaches them."""

from __future__ import annotations

import yaml

from .conftest import DEPLOY_DIR, kustomize
from .test_deploy_manifests import assert_valid_core


def test_sink_manifests_validate_and_serve_the_logger_url(kubectl):
    docs = {doc["kind"]: doc for doc in kustomize(kubectl, DEPLOY_DIR / "sink")}
    assert set(docs) == {"Deployment", "Service"}
    for doc in docs.values():
        assert_valid_core(doc)
    deployment, service = docs["Deployment"], docs["Service"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "mlops_assets.monitoring.sink"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    isvc = yaml.safe_load((DEPLOY_DIR / "kserve/base/inferenceservice.yaml").read_text())
    url = isvc["spec"]["predictor"]["logger"]["url"]
    namespace = deployment["metadata"]["namespace"]
    assert url == f"http://{service['metadata']['name']}.{namespace}.svc.cluster.local/events"
    assert service["spec"]["ports"][0]["port"] == 80
