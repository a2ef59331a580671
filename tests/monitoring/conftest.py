from __future__ import annotations

import pytest

from mlops_assets.data.generator import generate_churn
from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.settings import Settings, get_settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return get_settings({"MLOPS_HOME": str(tmp_path / "home")})


@pytest.fixture(scope="session")
def reference():
    """The training reference: baseline world, spec columns (entity, timestamp, features, target)."""
    return generate_churn(20_000, seed=7)[DEMO_SPEC.columns]
