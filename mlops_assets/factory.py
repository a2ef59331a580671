"""The asset factory: one copy of the asset graph per model of the catalog.

Each layer module defines its assets once, model-agnostic; :func:`model_definitions` loads them with
the model's name as the key prefix (``tumor/dataset``), one group per model and layer
(``tumor_training``), the ``mlops/model`` tag, and the model's own jobs, sensors and schedules.
Resources are shared keys whose value is chosen per run for the run's model (mlops_assets.resources).
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.automation import build_automation
from mlops_assets.data import assets as data_assets
from mlops_assets.deployment import assets as deployment_assets
from mlops_assets.deployment import online as online_gate
from mlops_assets.deployment.rollback import rollback_job
from mlops_assets.drift import assets as drift_assets
from mlops_assets.features import assets as feature_assets
from mlops_assets.features import online as online_features
from mlops_assets.monitoring import assets as monitoring_assets
from mlops_assets.monitoring.alerts import alert_sensors
from mlops_assets.naming import MODEL_TAG, job_name
from mlops_assets.registry import assets as registry_assets
from mlops_assets.resources import serving_backend
from mlops_assets.settings import Settings
from mlops_assets.training import assets as training_assets

LAYERS = (data_assets, feature_assets, online_features, training_assets, registry_assets, deployment_assets,
          online_gate, monitoring_assets, drift_assets)


def _for_model(model: str):
    def rename(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(group_name=job_name(model, spec.group_name)).merge_attributes(
            tags={MODEL_TAG: model})
    return rename


def model_assets(model: str) -> list:
    """The layers' assets and checks with keys ``<model>/<asset>`` and groups ``<model>_<layer>``."""
    assets = [asset.map_asset_specs(_for_model(model))
              for asset in dg.load_assets_from_modules(LAYERS, key_prefix=model)]
    # beats_champion is rebuilt for the model: a prefix given when loading does not reach its additional_ins
    checks = [check for check in dg.load_asset_checks_from_modules(LAYERS, asset_key_prefix=model)
              if "beats_champion" not in {spec.name for spec in check.check_specs}]
    return [*assets, *checks, training_assets.beats_champion_check(model)]


def model_definitions(settings: Settings) -> dg.Definitions:
    """One model's graph, jobs, sensors and schedules (``settings`` are that model's)."""
    model = settings.model_name
    automation = build_automation(settings)
    rollback = rollback_job(model)
    online_job = online_gate.online_evaluation_job(model)
    return dg.Definitions(
        assets=model_assets(model),
        jobs=[*automation.jobs, rollback, online_job],
        sensors=[*automation.sensors, *alert_sensors(settings, automation.retrain_job, rollback),
                 online_gate.build_online_gate_sensor(online_job, serving_backend(settings), model)],
        schedules=automation.schedules,
    )
