"""Everything in deploy/ renders and validates: CRDs against upstream schemas, core kinds with
kubernetes-validate, and each kustomize overlay builds with ``kubectl kustomize``."""

from __future__ import annotations

import copy
import shutil

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlops_assets.deployment import gitops, manifests
from mlops_assets.settings import get_settings

from .conftest import DEPLOY_DIR, kustomize

K8S_VERSION = "1.32.0"
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")


def strict(schema: dict) -> dict:
    """The schema with unknown fields rejected, as the API server's strict field validation does."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def assert_valid_crd(doc: dict, crd_schemas: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    assert key in crd_schemas, f"no CRD schema for {key}"
    errors = sorted(jsonschema.Draft7Validator(strict(crd_schemas[key])).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def assert_valid_core(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError on failure


def predictor_container(isvc: dict) -> dict:
    return isvc["spec"]["predictor"]["containers"][0]


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_each_overlay_builds_and_validates_against_the_kserve_crd(overlay, kubectl, crd_schemas):
    docs = kustomize(kubectl, DEPLOY_DIR / "kserve" / "overlays" / overlay)
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [ISVC]
    isvc = docs[0]
    assert_valid_crd(isvc, crd_schemas)
    assert isvc["metadata"]["namespace"] == manifests.overlay_namespace(overlay)
    for name in ("transformer", "predictor"):
        component = isvc["spec"][name]
        assert component["containers"][0]["resources"]["requests"]
        assert component["containers"][0]["resources"]["limits"]
        assert component["scaleMetric"] == "concurrency" and component["scaleTarget"] > 0
        assert 0 <= component["canaryTrafficPercent"] <= 100
    assert isvc["spec"]["predictor"]["logger"] == {
        "mode": "all",
        "url": f"http://prediction-log-sink.{manifests.overlay_namespace(overlay)}.svc.cluster.local/events"}
    assert predictor_container(isvc)["args"][:2] == ["--role", "predictor"]
    assert isvc["spec"]["transformer"]["containers"][0]["args"][:2] == ["--role", "transformer"]


def test_staging_scales_to_zero_and_prod_keeps_a_warm_replica(kubectl):
    staging, prod = (kustomize(kubectl, DEPLOY_DIR / "kserve" / "overlays" / o)[0] for o in ("staging", "prod"))
    assert {staging["spec"][c]["minReplicas"] for c in ("transformer", "predictor")} == {0}
    assert {prod["spec"][c]["minReplicas"] for c in ("transformer", "predictor")} == {1}


def test_base_builds_and_validates(kubectl, crd_schemas):
    (isvc,) = kustomize(kubectl, DEPLOY_DIR / "kserve" / "base")
    assert_valid_crd(isvc, crd_schemas)
    assert isvc["metadata"]["annotations"]["autoscaling.knative.dev/metric"] == "concurrency"


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_python_render_equals_kustomize_of_the_written_release(overlay, kubectl, crd_schemas, tmp_path):
    """One source of truth: the renderer and kustomize agree once the release is written to the overlay."""
    copy_dir = tmp_path / "kserve"
    shutil.copytree(DEPLOY_DIR / "kserve", copy_dir)
    manifest = manifests.render_inference_service(get_settings({}), "models:/churn/7", 7,
                                            "registry.example/mlops-serving:abc123", 20, overlay=overlay)
    gitops.write_gitops_manifest(copy_dir / "overlays" / overlay / "release.yaml", manifest)
    (built,) = kustomize(kubectl, copy_dir / "overlays" / overlay)
    assert built == manifest
    assert_valid_crd(built, crd_schemas)
    env = {e["name"]: e["value"] for e in predictor_container(built)["env"]}
    assert env["MLOPS_MODEL_URI"] == "models:/churn/7" and env["MLOPS_MODEL_VERSION"] == "7"
    assert predictor_container(built)["image"] == "registry.example/mlops-serving:abc123"
    args = predictor_container(built)["args"]
    assert args[args.index("--model_version") + 1] == "7" and args.count("--model_version") == 1
    assert args[args.index("--host") + 1] == "0.0.0.0"  # the serving CLI defaults to loopback
    assert built["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert built["metadata"]["annotations"][manifests.MODEL_VERSION_ANNOTATION] == "7"


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_committed_release_is_current_with_the_base(overlay):
    """release.yaml repeats the containers lists (a merge patch replaces lists): it must match the base."""
    path = manifests.overlay_dir(overlay) / "release.yaml"
    committed = yaml.safe_load(path.read_text())
    containers = committed["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e["value"] for e in containers["env"]}
    rendered = manifests.render_inference_service(
        get_settings({}), env["MLOPS_MODEL_URI"], env["MLOPS_MODEL_VERSION"], containers["image"],
        committed["spec"]["predictor"]["canaryTrafficPercent"], overlay=overlay)
    assert committed == manifests.release_patch(rendered, env["MLOPS_MODEL_URI"], env["MLOPS_MODEL_VERSION"],
                                          containers["image"],
                                          committed["spec"]["predictor"]["canaryTrafficPercent"])


def test_render_without_overlay_uses_settings_namespace_and_model_name(crd_schemas):
    settings = get_settings({"MLOPS_K8S_NAMESPACE": "team-a", "MLOPS_MODEL_NAME": "churn"})
    manifest = manifests.render_inference_service(settings, "s3://b/m", "3", "img:1", 100)
    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["metadata"]["name"] == "churn"
    assert manifest["spec"]["transformer"]["canaryTrafficPercent"] == 100
    assert_valid_crd(manifest, crd_schemas)
    with pytest.raises(ValueError, match="canary_percent"):
        manifests.render_inference_service(settings, "s3://b/m", "3", "img:1", 120)


def test_schema_check_rejects_a_misspelt_field(crd_schemas):
    """Guard for the validation itself: a typo in the manifest must fail it."""
    manifest = manifests.render_inference_service(get_settings({}), "s3://b/m", "3", "img:1", 20)
    manifest["spec"]["predictor"]["minReplica"] = 0
    with pytest.raises(AssertionError, match="minReplica"):
        assert_valid_crd(manifest, crd_schemas)


def test_karpenter_nodepools_validate_and_split_serving_from_training(crd_schemas):
    pools = list(yaml.safe_load_all((DEPLOY_DIR / "karpenter" / "nodepools.yaml").read_text()))
    pools = [p for p in pools if p]
    for pool in pools:
        assert_valid_crd(pool, crd_schemas)
    by_name = {p["metadata"]["name"]: p for p in pools}
    assert set(by_name) == {"serving-cpu", "training"}
    assert by_name["serving-cpu"]["spec"]["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
    assert by_name["training"]["spec"]["template"]["spec"]["taints"][0]["key"] == "mlops/pool"


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_argocd_application_validates_and_points_at_a_building_overlay(crd_schemas, kubectl, overlay):
    app = yaml.safe_load((DEPLOY_DIR / "argocd" / f"{overlay}.yaml").read_text())
    assert_valid_crd(app, crd_schemas)
    assert app["metadata"]["name"] == f"churn-{overlay}"
    path = app["spec"]["source"]["path"]
    assert path == f"deploy/kserve/overlays/{overlay}"
    (isvc,) = kustomize(kubectl, DEPLOY_DIR.parent / path)
    assert isvc["metadata"]["namespace"] == app["spec"]["destination"]["namespace"]
    # nothing hides a rollout from Argo CD: every commit's canary share must be seen and synced
    assert "ignoreDifferences" not in app["spec"]


def test_rbac_validates_and_reaches_only_inferenceservices_in_its_namespace(kubectl):
    docs = kustomize(kubectl, DEPLOY_DIR / "rbac")
    for doc in docs:
        assert_valid_core(doc)
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    assert kinds["ServiceAccount"]["metadata"]["name"] == get_settings({}).service_account
    assert {d["metadata"]["namespace"] for d in docs} == {"mlops"}
    rules = kinds["Role"]["rules"]
    assert {g for r in rules for g in r["apiGroups"]} == {"serving.kserve.io"}
    assert {res for r in rules for res in r["resources"]} == {"inferenceservices", "inferenceservices/status"}
    assert not any("*" in r["verbs"] or "delete" in r["verbs"] for r in rules)
    binding = kinds["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "mlops-deployer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-deployer", "namespace": "mlops"}]


def test_runner_rbac_validates_and_reaches_only_jobs_and_pods():
    docs = list(yaml.safe_load_all((DEPLOY_DIR / "dagster" / "runner-rbac.yaml").read_text()))
    for doc in docs:
        assert_valid_core(doc)
    role = next(doc for doc in docs if doc["kind"] == "Role")
    resources = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert resources == {"jobs", "jobs/status", "pods", "pods/log", "events"}
    assert all("secrets" not in rule["resources"] for rule in role["rules"])


def test_core_validation_rejects_a_broken_role():
    """Guard for kubernetes-validate: a Role rule without verbs must fail."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "x"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbz": ["get"]}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        assert_valid_core(role)


def test_podmonitor_scrapes_only_the_serving_pods():
    monitor = yaml.safe_load((DEPLOY_DIR / "monitoring" / "k8s" / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"] == {"serving.kserve.io/inferenceservice": "churn"}
    assert selector["matchExpressions"][0]["values"] == ["predictor", "transformer"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["portNumber"] == 9088


def test_dagster_helm_values_serve_this_code_location_with_k8s_launcher_and_postgres():
    values = yaml.safe_load((DEPLOY_DIR / "dagster" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "mlops_assets.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"] == "mlops"
    assert values["postgresql"]["enabled"] is True
    assert "postgresqlPassword" not in values["postgresql"]  # generated secret, not in the repo


def test_feast_k8s_store_uses_s3_offline_redis_online_from_env_placeholders():
    text = (DEPLOY_DIR / "feast" / "feature_store.k8s.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["online_store"] == {"type": "redis", "connection_string": "${MLOPS_REDIS}"}
    assert config["offline_store"]["type"] == "file"
    assert config["registry"]["path"] == "s3://${MLOPS_S3_BUCKET}/feast/registry.pb"


def test_serving_dockerfile_runs_the_serving_module():
    text = (DEPLOY_DIR / "kserve" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "mlops_assets.serving"]' in text
    assert "OMP_NUM_THREADS=1" in text


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_every_serving_container_has_readiness_and_liveness_probes(kubectl, crd_schemas, overlay):
    """What Argo CD applies (each overlay) and what the deploy step applies (the rendering): every
    container of every component is probed, readiness on the model, liveness on the server."""
    (built,) = kustomize(kubectl, manifests.overlay_dir(overlay))
    rendered = manifests.render_inference_service(get_settings({}), "models:/churn/3", "3", "img:3", 20)
    for isvc in (built, rendered):
        assert_valid_crd(isvc, crd_schemas)
        containers = [c for component in manifests.COMPONENTS for c in isvc["spec"][component]["containers"]]
        assert len(containers) == len(manifests.COMPONENTS)
        for container in containers:
            assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
            assert "--http_port" in container["args"] and container["args"][container["args"].index("--http_port") + 1] == "8080"
