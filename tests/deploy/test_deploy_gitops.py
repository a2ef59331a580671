"""GitOps mode: the release lands in the overlay file as a commit."""

from __future__ import annotations

import subprocess

import yaml

from mlops_assets.deployment import k8s
from mlops_assets.settings import get_settings


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_release_is_written_without_namespace_and_committed(tmp_path):
    repo = tmp_path / "gitops"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "deployer@example.invalid")
    git(repo, "config", "user.name", "deployer")
    manifest = k8s.render_inference_service(get_settings({}), "models:/churn/4", 4, "img:4", 20,
                                            overlay="prod")
    path = k8s.write_gitops_manifest(repo / "overlays" / "prod" / "release.yaml", manifest)
    sha = k8s.commit_gitops_change(repo, [path], "deploy(prod): churn v4")
    assert git(repo, "log", "-1", "--format=%H %s").strip() == f"{sha} deploy(prod): churn v4"
    written = yaml.safe_load(path.read_text())
    assert "namespace" not in written["metadata"]  # the overlay's kustomization owns it
    assert written["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert written == k8s.release_patch(manifest, "models:/churn/4", "4", "img:4", 20)


def test_cli_writes_the_release_of_an_overlay(tmp_path, monkeypatch):
    monkeypatch.setattr(k8s, "KSERVE_DIR", tmp_path)
    overlay = tmp_path / "overlays" / "staging"
    overlay.mkdir(parents=True)
    src = k8s.PROJECT_ROOT / "deploy" / "kserve" / "overlays" / "staging"
    for name in ("kustomization.yaml", "environment.yaml"):
        (overlay / name).write_text((src / name).read_text())
    k8s.main(["--overlay", "staging", "--image", "img:9", "--model-uri", "models:/churn/9",
              "--model-version", "9", "--canary-percent", "10"])
    written = yaml.safe_load((overlay / "release.yaml").read_text())
    assert written["spec"]["transformer"]["canaryTrafficPercent"] == 10
    assert written["spec"]["predictor"]["containers"][0]["image"] == "img:9"
