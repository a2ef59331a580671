"""Fixtures for the monitoring-as-code tests: binaries, contract metric names, settings, servers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests import prometheus_server as prom
from mlops_assets.settings import PROJECT_ROOT, Settings, get_settings

from .promql_names import allowed_series, contract_metrics

CONTRACTS_MD = PROJECT_ROOT / "docs" / "CONTRACTS.md"


def _require(find) -> Path:
    try:
        return find()
    except prom.PrometheusNotFound as missing:
        pytest.fail(str(missing), pytrace=False)


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    return _require(prom.find_promtool)


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return _require(prom.find_prometheus)


@pytest.fixture(scope="session")
def amtool_bin() -> Path:
    found = shutil.which("amtool")
    if not found:
        pytest.fail("`amtool` not found; install the Debian package that ships it: "
                    "apt-get install -y prometheus-alertmanager", pytrace=False)
    return Path(found)


@pytest.fixture(scope="session")
def contract_series() -> set[str]:
    """Every series name the contract allows, histograms expanded to _bucket/_sum/_count."""
    return allowed_series(*contract_metrics(CONTRACTS_MD))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings({"MLOPS_HOME": str(tmp_path / "home")})


@pytest.fixture
def prometheus_server_factory(prometheus_bin: Path) -> Iterator:
    """Start real Prometheus servers from a config path; every one is stopped at teardown."""
    servers: list[prom.PrometheusServer] = []

    def start(config_path: Path) -> prom.PrometheusServer:
        servers.append(prom.start_prometheus(config_path))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
