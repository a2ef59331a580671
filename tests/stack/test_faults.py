"""A service that is down when a run starts: the run fails before any step, within the configured
timeout, naming the service and its URL; no alias moves."""

from __future__ import annotations

import socket

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.stack.health import require_services
from tests.stack.conftest import stack_settings

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A port nothing listens on (a service that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_texts(result) -> str:
    texts = []
    for event in result.all_events:
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None:
            texts.append(error.to_string())
        if event.message:
            texts.append(event.message)
    return "\n".join(texts)


@pytest.mark.parametrize("service, setting, template", [
    ("PostgreSQL", "MLOPS_POSTGRES_URL", "postgresql://mlops@127.0.0.1:{port}"),
    ("Redis", "MLOPS_REDIS", "127.0.0.1:{port}"),
    ("S3", "MLOPS_S3_ENDPOINT_URL", "http://127.0.0.1:{port}"),
    ("MLflow tracking server", "MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}"),
    ("prediction-log sink", "MLOPS_SINK_URL", "http://127.0.0.1:{port}"),
])
def test_a_run_fails_at_start_naming_the_service_that_is_down(stack, tmp_path, service, setting, template):
    url = template.format(port=closed_port())
    healthy = stack_settings(stack, tmp_path / "healthy")
    registry = ModelRegistry(healthy)
    aliases = {alias: registry.version_of(alias) for alias in ("champion", "challenger", "previous")}
    settings = stack_settings(stack, tmp_path / "home", **{setting: url, "MLOPS_SERVICE_TIMEOUT_S": "2"})
    defs = build_definitions(settings)
    result = dg.materialize([*defs.assets, *defs.asset_checks],
                            selection=[f"{settings.model_name}/{name}" for name in (
                                "dataset", "feature_table", "feature_store", "training_set", "holdout_set",
                                "candidate_model", "champion_model")],
                            resources=defs.resources, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    text = error_texts(result)
    assert f"{service} at {url}" in text, text[-3000:]
    assert not result.get_asset_materialization_events()  # not a single step ran
    assert {alias: registry.version_of(alias) for alias in aliases} == aliases


def test_every_service_up_passes_the_start_check(stack, tmp_path):
    require_services(stack_settings(stack, tmp_path))  # raises naming any service that is down
