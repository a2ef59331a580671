"""The `stack` profile's services, started once per session on free loopback ports in a temporary
folder (CI starts from nothing: this fixture is what starts them), and stopped at the end."""

from __future__ import annotations

import shutil

import pytest

from mlops_assets.settings import Settings, get_settings
from mlops_assets.stack.services import Stack, free_ports


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    services = Stack(root=tmp_path_factory.mktemp("mlops-stack"), ports=free_ports())
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
