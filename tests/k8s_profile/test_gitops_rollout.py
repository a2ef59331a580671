"""GitOps mode end to end: every change to the InferenceService is a commit to a real git remote,
which an Argo CD stand-in syncs into the Kubernetes API stand-in (as Argo CD would: it reads the
release at the remote's HEAD and applies it, then reports the Application synced and healthy or
degraded). The deploy step commits the canary, waits for Argo CD and the canary, smoke-tests it
through its cluster URL, commits 100%; on failure it reverts its commits and fails with the reason."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from mlops_assets.deployment.gitops import write_gitops_manifest
from mlops_assets.deployment.manifests import deployed_version, merge_patch, render_inference_service
from tests.conftest import step_failure

from .test_deploy_rollout import PREDICT, RegistryStub, deploy, make_settings, manifest, smoke_requests_seen, status_from

pytestmark = pytest.mark.integration

RELEASE = "deploy/kserve/overlays/prod/release.yaml"
APP = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
       "metadata": {"name": "churn-prod", "namespace": "argocd"},
       "spec": {"project": "default", "source": {"path": "deploy/kserve/overlays/prod"}}}
ISVC_KEY = ("inferenceservices", "ml-prod", "churn")


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


class ArgoStandIn:
    """Argo CD as seen through its Application's status: each read syncs the remote's HEAD into the
    cluster (the release merged onto the base, applied as a new generation if it changed) and
    reports it synced; ``health`` is what Argo CD reports once synced."""

    def __init__(self, kube, remote, settings):
        self.kube, self.remote, self.settings = kube, remote, settings
        self.health = {"status": "Healthy"}
        self.synced: list[str] = []

    def __call__(self, app: dict, reads: int) -> dict:
        head = git(self.remote, "rev-parse", "HEAD")
        if not self.synced or self.synced[-1] != head:
            release = yaml.safe_load(git(self.remote, "show", f"HEAD:{RELEASE}"))
            base = render_inference_service(self.settings, "models:/churn/0", "0", "unused", 100)
            desired = merge_patch(base, release)
            live = self.kube.objects.get(ISVC_KEY)
            generation = (live or {}).get("metadata", {}).get("generation", 0) + 1
            desired["metadata"] = {**desired["metadata"], "generation": generation}
            self.kube.objects[ISVC_KEY] = desired  # called under the stand-in's lock
            self.kube.reads[ISVC_KEY] = 0
            self.synced.append(head)
        return {"sync": {"status": "Synced", "revision": head}, "health": self.health,
                "operationState": {"phase": "Succeeded", "message": "successfully synced"}}


@pytest.fixture
def gitops(tmp_path, s3_server, bucket, kube, service, monkeypatch):
    # a pod's git: no global or system config, hence no identity
    (tmp_path / "empty.gitconfig").write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "empty.gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    remote, checkout = tmp_path / "remote.git", tmp_path / "checkout"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(checkout))  # no git identity, as in a fresh pod
    release = checkout / RELEASE
    settings = make_settings(tmp_path, s3_server, bucket, kube, MLOPS_DEPLOY_MODE="gitops",
                             MLOPS_GITOPS_PATH=str(release), MLOPS_GITOPS_REMOTE="origin",
                             MLOPS_ARGOCD_APP="churn-prod")
    write_gitops_manifest(release, manifest(settings, 1, canary=100))  # v1 serves, as released before
    git(checkout, "add", ".")
    git(checkout, "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-q", "-m",
        "deploy(churn): v1 at 100%")
    git(checkout, "push", "-q", "origin", "HEAD")
    argo = ArgoStandIn(kube, remote, settings)
    kube.seed(APP)
    kube.status_for["applications"] = argo
    kube.status_for["inferenceservices"] = lambda obj, reads: status_from(service, obj)
    argo(APP, 0)  # Argo CD has synced v1
    kube.requests.clear()
    return settings, checkout, remote, argo


def remote_log(remote) -> list[str]:
    return git(remote, "log", "--format=%s").splitlines()


def released_version(remote) -> str:
    return deployed_version(yaml.safe_load(git(remote, "show", f"HEAD:{RELEASE}")))


def test_canary_commit_synced_smoke_tested_then_100_percent_committed(gitops, kube, service):
    settings, checkout, remote, argo = gitops
    service.versions = {"latest": "2", "prev": "1", "main": "1"}
    result = deploy(settings, RegistryStub(previous="1"), champion="2", smoke_requests=3)
    assert result.success, step_failure(result, "inference_service")

    assert remote_log(remote) == ["deploy(churn): v2 at 100%", "deploy(churn): v2 at 20%", "deploy(churn): v1 at 100%"]
    assert git(remote, "log", "-2", "--format=%an <%ae>").splitlines() == [
        "mlops-deployer <mlops-deployer@users.noreply.invalid>"] * 2
    assert git(checkout, "rev-parse", "HEAD") == git(remote, "rev-parse", "HEAD") == argo.synced[-1]
    # read the InferenceService; after each commit wait for Argo CD, then for the InferenceService
    assert kube.calls() == [("GET", "isvc"), ("WATCH", "app"), ("WATCH", "isvc"), ("WATCH", "app"), ("WATCH", "isvc")]
    assert kube.applied() == []  # the deploy step never writes to the cluster itself
    # the canary answered through its tagged cluster URL between the two commits
    assert smoke_requests_seen(service) == [("POST", "latest", PREDICT, 3)] * 3
    canary_commit = yaml.safe_load(git(remote, "show", f"HEAD~1:{RELEASE}"))
    assert canary_commit["spec"]["predictor"]["canaryTrafficPercent"] == 20
    live = kube.objects[ISVC_KEY]
    assert live["spec"]["predictor"]["canaryTrafficPercent"] == 100 and deployed_version(live) == "2"


def test_degraded_application_reverts_the_commit_restores_champion_and_fails_with_argos_reason(gitops, kube, service):
    settings, checkout, remote, argo = gitops
    argo.health = {"status": "Degraded", "message": "InferenceService churn: RevisionMissing"}
    registry = RegistryStub(previous="1")
    result = deploy(settings, registry, champion="2")
    assert not result.success

    assert remote_log(remote)[1:] == ["deploy(churn): v2 at 20%", "deploy(churn): v1 at 100%"]
    assert remote_log(remote)[0].startswith('Revert "deploy(churn): v2 at 20%"')
    assert released_version(remote) == "1"  # the release file is v1's again, pushed
    assert kube.calls() == [("GET", "isvc"), ("WATCH", "app")]  # held until MLOPS_READY_TIMEOUT_S=1
    assert service.requests == []  # never smoke-tested
    failure = step_failure(result, "inference_service")
    assert "Argo CD: Application argocd/churn-prod not synced at" in failure and "within 1s" in failure
    assert "health Degraded (InferenceService churn: RevisionMissing)" in failure
    assert "reverted" in failure and "pushed to origin" in failure
    assert len(registry.rollbacks) == 1  # @champion restored to @previous


def test_canary_failing_its_smoke_test_is_reverted(gitops, kube, service):
    settings, checkout, remote, argo = gitops
    service.versions = {"latest": "1", "prev": "1", "main": "1"}  # the new revision answers as v1
    registry = RegistryStub(previous="1")
    result = deploy(settings, registry, champion="2", smoke_requests=2)
    assert not result.success
    assert remote_log(remote)[0].startswith('Revert "deploy(churn): v2 at 20%"')
    assert released_version(remote) == "1"
    assert kube.calls() == [("GET", "isvc"), ("WATCH", "app"), ("WATCH", "isvc")]
    failure = step_failure(result, "inference_service")
    assert "smoke test of the canary revision" in failure and "model version 1, expected 2" in failure
    assert len(registry.rollbacks) == 1
