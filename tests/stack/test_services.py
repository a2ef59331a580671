"""`python -m mlops_assets.stack up`: every service answers on loopback, the settings file is what
the profile reads, and a service that cannot start is named with its URL and log."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from mlops_assets.settings import SettingsError, get_settings
from mlops_assets.stack.services import ORDER, Stack, StackError, free_ports
from tests.stack.conftest import stack_settings

pytestmark = pytest.mark.integration


def test_every_service_is_ready_on_loopback(stack):
    state = stack.status()
    assert list(state) == list(ORDER)
    assert all(value.startswith("ready ") for value in state.values()), state
    assert all("127.0.0.1" in value for value in state.values())
    assert httpx.get(f"{stack.url('mlflow')}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 200
    assert httpx.get(f"{stack.url('prometheus')}/api/v1/status/config").json()["status"] == "success"


def test_the_profile_reads_the_stack_env_file(stack, tmp_path):
    settings = stack_settings(stack, tmp_path)
    assert settings.profile == "stack"
    assert settings.s3_endpoint_url == stack.url("s3")
    assert settings.mlflow_tracking_uri == stack.url("mlflow")
    assert settings.postgres_url == stack.url("postgres")
    assert settings.data_git_url == stack.url("git")
    assert settings.sink_url == stack.url("sink")
    assert settings.dvc_remote == "s3://mlops/dvc"
    assert settings.mlflow_artifact_root == "mlflow-artifacts:/"
    # the environment wins over the file
    assert stack_settings(stack, tmp_path, MLOPS_REDIS="127.0.0.1:1").redis_connection == "127.0.0.1:1"


def test_the_stack_profile_names_every_missing_setting(tmp_path):
    empty = tmp_path / "stack.env"
    empty.write_text("# nothing\n")
    with pytest.raises(SettingsError) as error:
        get_settings({"MLOPS_PROFILE": "stack", "MLOPS_STACK_ENV": str(empty)})
    for name in ("MLOPS_S3_BUCKET", "MLFLOW_TRACKING_URI", "MLOPS_POSTGRES_URL", "MLOPS_SINK_URL",
                 "MLOPS_DATA_GIT_URL"):
        assert name in str(error.value)
    with pytest.raises(SettingsError, match="does not exist"):
        get_settings({"MLOPS_PROFILE": "stack", "MLOPS_STACK_ENV": str(tmp_path / "missing.env")})


def test_a_service_that_cannot_start_is_named_with_its_url_and_log(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    ports = free_ports()
    ports["pushgateway"] = blocker.getsockname()[1]  # taken: the pushgateway exits at once
    broken = Stack(root=tmp_path, ports=ports, ready_timeout_s=20)
    try:
        with pytest.raises(StackError) as error:
            broken.up(only=("pushgateway",))
    finally:
        broken.down()
        blocker.close()
    message = str(error.value)
    assert message.startswith(f"pushgateway at http://127.0.0.1:{ports['pushgateway']} did not become ready")
    assert str(tmp_path / "logs" / "pushgateway.log") in message
    assert json.loads((tmp_path / "run" / "ports.json").read_text()) == ports
