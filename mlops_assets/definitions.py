"""The code location: each layer owns its assets and checks; this module only picks resources
and the executor for the profile. Heavy libraries are imported inside asset bodies."""

from __future__ import annotations

import dagster as dg

from mlops_assets.data import assets as data_assets
from mlops_assets.features import assets as feature_assets
from mlops_assets.registry import assets as registry_assets
from mlops_assets.resources import build_resources
from mlops_assets.settings import Settings, get_settings
from mlops_assets.training import assets as training_assets

LAYERS = (data_assets, feature_assets, training_assets, registry_assets)


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(LAYERS),
        asset_checks=dg.load_asset_checks_from_modules(LAYERS),
        jobs=[registry_assets.rollback],
        resources=build_resources(settings),
        executor=dg.in_process_executor if settings.profile == "local" else None,
    )


defs = build_definitions(get_settings())
