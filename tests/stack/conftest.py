"""The `stack` profile's services, started once per session on free loopback ports in a temporary
folder (CI starts from nothing: this fixture is what starts them), and stopped at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlops_assets.settings import PROJECT_ROOT, Settings, get_settings
from mlops_assets.stack.services import Stack, free_ports


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    # the alert rules as deployed, with `for:` shortened so a firing alert takes seconds, not minutes
    services = Stack(root=tmp_path_factory.mktemp("mlops-stack"), ports=free_ports(), alert_for="5s")
    try:
        services.up()
        yield services
    finally:
        services.down()
        if services.root not in services.pg_data.parents:  # kept in the postgres user's home
            shutil.rmtree(services.pg_data, ignore_errors=True)


def stack_settings(stack: Stack, home, **extra: str) -> Settings:
    """Settings of a `stack` profile process whose only local state is ``home`` (configuration)."""
    return get_settings({"MLOPS_PROFILE": "stack", "MLOPS_HOME": str(home),
                         "MLOPS_STACK_ENV": str(stack.env_file), **extra})


MODEL = "churn-loop"  # the demo's own registered model: other stack tests touch `churn`


def scratch_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mlops-run-*")}


@pytest.fixture(scope="session")
def stack_demo(stack, tmp_path_factory):
    """`MLOPS_PROFILE=stack mlops demo` once per session: (settings, completed process, summary,
    temporary directories that existed before)."""
    home = tmp_path_factory.mktemp("stack-demo-home")
    settings = stack_settings(stack, home, MLOPS_MODEL_NAME=MODEL)
    env = {**settings.env_for_subprocess(), "MLOPS_STACK_ENV": str(stack.env_file), "MLOPS_MODEL_NAME": MODEL}
    before = scratch_dirs()
    command = [str(Path(sys.executable).with_name("mlops")), "demo", "--rows", "4000", "--drift-requests", "2500"]
    try:
        result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200)
        summary = json.loads((home / "demo-summary.json").read_text()) if (home / "demo-summary.json").exists() else {}
        yield settings, result, summary, before
    finally:
        from mlops_assets.serving.backend_local import LocalServingBackend

        LocalServingBackend(settings).stop()
