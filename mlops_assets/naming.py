"""Names that carry the model: asset keys ``<model>/<asset>``, jobs/sensors ``<model>_<name>``, the
``mlops/model`` run tag, and which model a run belongs to.

Each model in the catalog gets its own copy of the asset graph with its name as the key prefix
(:mod:`mlops_assets.factory`); asset bodies stay model-agnostic and name their siblings through
:func:`sibling_key`.
"""

from __future__ import annotations

import re
from typing import Iterable

import dagster as dg

MODEL_TAG = "mlops/model"


class RunModelError(ValueError):
    """A run's assets belong to more than one model, or to none the catalog knows."""


def model_key(model: str, asset: str) -> dg.AssetKey:
    return dg.AssetKey([model, asset])


def model_keys(model: str, assets: Iterable[str]) -> list[dg.AssetKey]:
    return [model_key(model, asset) for asset in assets]


def job_name(model: str, base: str) -> str:
    """``churn_retrain_job``: jobs, sensors, schedules and groups are unique per model in one code
    location (Dagster names take letters, digits and ``_``: a ``-`` in a model name becomes ``_``)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', model)}_{base}"


def sibling_key(context, asset: str) -> dg.AssetKey:
    """Key of another asset of the same model: from the asset being computed, else the run's model tag
    (ops of the rollback job), else unprefixed (the layer modules' own, unprefixed assets)."""
    key = getattr(context, "asset_key", None) if getattr(context, "has_assets_def", True) else None
    if key is not None and len(key.path) > 1:
        return dg.AssetKey([*key.path[:-1], asset])
    model = context.run.tags.get(MODEL_TAG) if getattr(context, "run", None) else None
    return model_key(model, asset) if model else dg.AssetKey(asset)


def run_model(run, models: Iterable[str]) -> str:
    """The model a run works for: its ``mlops/model`` tag, else the prefix of the assets (and checks)
    it selects, else the only model there is. A run across two models is refused, naming them."""
    models = list(models)
    tagged = (run.tags or {}).get(MODEL_TAG) if run is not None else None
    if tagged:
        if tagged not in models:
            raise RunModelError(f"run tag {MODEL_TAG}={tagged!r} names no model in the catalog "
                                f"(models: {', '.join(models)})")
        return tagged
    keys = [*(getattr(run, "asset_selection", None) or ()),
            *(check.asset_key for check in (getattr(run, "asset_check_selection", None) or ()))]
    prefixes = sorted({key.path[0] for key in keys if len(key.path) > 1 and key.path[0] in models})
    if len(prefixes) > 1:
        raise RunModelError(f"a run materializes one model's assets at a time; this one selects "
                            f"{', '.join(prefixes)} (launch one run per model)")
    if prefixes:
        return prefixes[0]
    if len(models) == 1:
        return models[0]
    raise RunModelError(f"cannot tell which model this run is for (models: {', '.join(models)}): "
                        f"select one model's assets, or tag the run {MODEL_TAG}=<name>")
