"""dagster_cloud.yaml: the code location Dagster+ builds and runs, matching the Helm values."""

from __future__ import annotations

import yaml

from mlops_assets.settings import PROJECT_ROOT, get_settings

DEPLOY = PROJECT_ROOT / "deploy"


def test_dagster_cloud_location_matches_the_helm_values_and_validates():
    from dagster_k8s.container_context import K8sContainerContext

    (location,) = yaml.safe_load((PROJECT_ROOT / "dagster_cloud.yaml").read_text())["locations"]
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]

    assert location["location_name"] == "mlops_assets"
    assert ["--module-name", location["code_source"]["module_name"]] == deployment["dagsterApiGrpcArgs"]
    assert location["build"] == {"directory": ".", "registry": deployment["image"]["repository"]}
    assert (PROJECT_ROOT / location["build"]["directory"] / "pyproject.toml").is_file()
    # both build the code-location image (the root Dockerfile), never the serving one
    assert deployment["image"]["repository"].endswith("/mlops-code")
    assert (PROJECT_ROOT / location["build"]["directory"] / "Dockerfile").read_text().startswith("# Code-location image")

    # dagster-k8s parses the container context exactly as the Dagster+ agent does
    context = K8sContainerContext.create_from_config(location["container_context"])
    run, server = context.run_k8s_config.to_dict(), context.server_k8s_config.to_dict()
    assert context.namespace == launcher["jobNamespace"] == "mlops"
    for pod in (run, server):
        assert pod["pod_spec_config"]["service_account_name"] == "mlops-runner"
        assert pod["container_config"]["env_from"] == (
            [{"config_map_ref": {"name": m["name"]}} for m in deployment["envConfigMaps"]]
            + [{"secret_ref": {"name": s["name"]}} for s in deployment["envSecrets"]])
        assert {"name": "MLOPS_PROFILE", "value": "k8s"} in pod["container_config"]["env"]
    assert server["container_config"]["resources"] == deployment["resources"]
    run_config = launcher["runK8sConfig"]
    assert run["container_config"]["resources"] == run_config["containerConfig"]["resources"]
    assert run["pod_spec_config"]["node_selector"] == run_config["podSpecConfig"]["nodeSelector"]
    assert run["pod_spec_config"]["tolerations"] == run_config["podSpecConfig"]["tolerations"]
    # runs manage the deploy step's Jobs as mlops-runner; the step applies InferenceServices as
    # the deployer (settings.service_account), each bound in this namespace only
    runner = {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "dagster" / "runner-rbac.yaml").read_text())}
    assert runner["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "namespace": context.namespace,
                                                  "name": run["pod_spec_config"]["service_account_name"]}]
    assert {rule["apiGroups"][0] for rule in runner["Role"]["rules"]} == {"batch", ""}
    deployer = yaml.safe_load((DEPLOY / "rbac" / "rolebinding.yaml").read_text())
    assert deployer["subjects"] == [{"kind": "ServiceAccount", "namespace": context.namespace,
                                     "name": get_settings({}).service_account}]


def test_the_settings_config_map_names_each_image_where_it_is_built_and_run():
    """One name per image everywhere: the code image in the Helm values, dagster_cloud.yaml and the
    deploy step's Job (MLOPS_CODE_IMAGE); the serving image in the InferenceService releases and the
    deploy workflow (MLOPS_SERVING_IMAGE). The config map loads as a complete k8s profile."""
    import kubernetes_validate

    config_map = yaml.safe_load((DEPLOY / "dagster" / "settings.yaml").read_text())
    kubernetes_validate.validate(config_map, "1.32.0", strict=True)
    settings = get_settings(config_map["data"])  # every required k8s setting is there
    (location,) = yaml.safe_load((PROJECT_ROOT / "dagster_cloud.yaml").read_text())["locations"]
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    code_repository = settings.code_image.rsplit(":", 1)[0]
    assert code_repository == deployment["image"]["repository"] == location["build"]["registry"]
    serving_repository = settings.serving_image.rsplit(":", 1)[0]
    for overlay in ("staging", "prod"):
        release = yaml.safe_load((DEPLOY / "kserve" / "overlays" / overlay / "release.yaml").read_text())
        for component in ("transformer", "predictor"):
            (container,) = release["spec"][component]["containers"]
            assert container["image"].rsplit(":", 1)[0] == serving_repository
    workflow = (PROJECT_ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert serving_repository.rsplit("/", 1)[1] + ":" in workflow  # ghcr.io/<owner>/mlops-serving:<sha>
    assert code_repository != serving_repository
