"""GitOps: the release lands in the overlay file as a commit; the workflow's command writes only a gated version."""

from __future__ import annotations

import subprocess

import yaml

import pytest

from mlops_assets.deployment import gitops, manifests, release
from mlops_assets.settings import get_settings


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_release_is_written_without_namespace_and_committed(tmp_path):
    repo = tmp_path / "gitops"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "deployer@example.invalid")
    git(repo, "config", "user.name", "deployer")
    manifest = manifests.render_inference_service(get_settings({}), "models:/churn/4", 4, "img:4", 20,
                                            overlay="prod")
    path = gitops.write_gitops_manifest(repo / "overlays" / "prod" / "release.yaml", manifest)
    sha = gitops.commit_gitops_change(repo, [path], "deploy(prod): churn v4")
    assert git(repo, "log", "-1", "--format=%H %s").strip() == f"{sha} deploy(prod): churn v4"
    written = yaml.safe_load(path.read_text())
    assert "namespace" not in written["metadata"]  # the overlay's kustomization owns it
    assert written["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert written == manifests.release_patch(manifest, "models:/churn/4", "4", "img:4", 20)


class RegistryStub:
    """The registry as the release command reads it: @champion and each version's tags."""

    name = "churn"

    def __init__(self, champion: str | None, tags: dict[str, dict[str, str]]):
        self.champion, self.tags = champion, tags

    def version_of(self, alias: str) -> str | None:
        return self.champion if alias == "champion" else None

    def version_info(self, version: str) -> dict:
        from mlops_assets.registry.client import RegistryError

        if version not in self.tags:
            raise RegistryError(f"churn has no version {version}")
        return {"version_tags": self.tags[version]}


PASSED = {"gate.beats_champion": "passed", "gate.meets_floor": "passed", "gate.reason": "beats v3"}


@pytest.fixture
def overlay_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(manifests, "KSERVE_DIR", tmp_path)
    overlay = tmp_path / "overlays" / "staging"
    overlay.mkdir(parents=True)
    src = manifests.PROJECT_ROOT / "deploy" / "kserve" / "overlays" / "staging"
    for name in ("kustomization.yaml", "environment.yaml"):
        (overlay / name).write_text((src / name).read_text())
    return overlay


def test_the_release_command_writes_champion_when_no_version_is_named(overlay_copy):
    registry = RegistryStub("9", {"9": PASSED})
    assert release.main(["--overlay", "staging", "--image", "img:9", "--canary-percent", "10"], registry=registry) == 0
    written = yaml.safe_load((overlay_copy / "release.yaml").read_text())
    assert written["spec"]["transformer"]["canaryTrafficPercent"] == 10
    assert written["spec"]["predictor"]["containers"][0]["image"] == "img:9"
    assert written["metadata"]["annotations"]["mlops/model-version"] == "9"


def test_the_release_command_takes_a_named_version_only_if_every_gate_passed(overlay_copy, capsys):
    registry = RegistryStub("9", {"9": PASSED, "8": {**PASSED, "gate.beats_champion": "failed"},
                                  "7": {"gate.meets_floor": "passed"}})
    assert release.main(["--overlay", "staging", "--image", "img", "--model-version", "8"], registry=registry) == 1
    assert capsys.readouterr().err.strip() == ("error: refusing to deploy churn/8: gate.beats_champion='failed' "
                                               "(only a version that passed every gate is deployed)")
    assert release.main(["--overlay", "staging", "--image", "img", "--model-version", "7"], registry=registry) == 1
    assert "refusing to deploy churn/7: gate.beats_champion is missing" in capsys.readouterr().err
    assert release.main(["--overlay", "staging", "--image", "img", "--model-version", "6"], registry=registry) == 1
    assert "refusing to deploy churn/6: churn has no version 6" in capsys.readouterr().err
    assert not (overlay_copy / "release.yaml").exists()  # nothing written for a refused version
    assert release.main(["--overlay", "staging", "--image", "img", "--model-version", "9"], registry=registry) == 0


def test_a_champion_without_passed_gates_is_refused_too():
    with pytest.raises(release.ReleaseRefused, match="gate.meets_floor='failed'"):
        release.gated_version(RegistryStub("5", {"5": {**PASSED, "gate.meets_floor": "failed"}}), None)
    with pytest.raises(release.ReleaseRefused, match="churn has no @champion and no --model-version"):
        release.gated_version(RegistryStub(None, {}), None)
