"""The code location: each layer owns its assets and checks; this module only picks resources,
automation and the executor for the settings it is given. Heavy libraries are imported inside asset bodies."""

import dagster as dg

from mlops_assets.automation import build_automation
from mlops_assets.data import assets as data_assets
from mlops_assets.deployment import assets as deployment_assets
from mlops_assets.deployment import online as online_gate
from mlops_assets.deployment.rollback import rollback
from mlops_assets.drift import assets as drift_assets
from mlops_assets.features import assets as feature_assets
from mlops_assets.features import online as online_features
from mlops_assets.monitoring import assets as monitoring_assets
from mlops_assets.monitoring.alerts import alert_sensors
from mlops_assets.registry import assets as registry_assets
from mlops_assets.resources import build_resources
from mlops_assets.settings import Settings, get_settings
from mlops_assets.training import assets as training_assets

LAYERS = (data_assets, feature_assets, online_features, training_assets, registry_assets, deployment_assets,
          online_gate, monitoring_assets, drift_assets)


def build_definitions(settings: Settings) -> dg.Definitions:
    automation = build_automation(settings)
    return dg.Definitions(
        assets=dg.load_assets_from_modules(LAYERS),
        asset_checks=dg.load_asset_checks_from_modules(LAYERS),
        jobs=[*automation.jobs, *online_features.JOBS, *online_gate.JOBS, rollback],
        sensors=[*automation.sensors, *online_gate.SENSORS,
                 *alert_sensors(settings, automation.retrain_job, rollback)],
        schedules=[*automation.schedules, *online_features.SCHEDULES],
        resources=build_resources(settings),
        # local and stack: one run worker process per run (in stack its throwaway directory dies with it)
        executor=dg.in_process_executor if settings.profile != "k8s" else None,
    )


defs = build_definitions(get_settings())
