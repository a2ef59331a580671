"""Deployment layer: the champion rolled out through a canary (`inference_service`) and offline
scoring with the same feature definitions (`batch_predictions`)."""

from typing import Any

import dagster as dg

from mlops_assets.naming import sibling_key
import pandas as pd

from mlops_assets.data.versioning import DataVersioner
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.registry.assets import RELEASE_POOL, record_champion
from mlops_assets.registry.client import CHAMPION, ModelRegistry
from mlops_assets.settings import Settings

from .backend import RolloutConfig, RolloutFailed, ServingBackend

__all__ = ["RolloutConfig", "inference_service", "serving_healthy", "batch_predictions"]


def serving_metadata(result: dict) -> dict:
    return {"endpoint": dg.MetadataValue.url(result["endpoint"]) if result.get("endpoint") else "none",
            "revision": result["revision"], "model_version": result["model_version"], "action": result["action"],
            "smoke_test": dg.MetadataValue.json(result["smoke"])}


def record_serving(context, result: dict, reason: str) -> None:
    """An `inference_service` materialization for a rollout made outside the asset (the rollback job)."""
    context.log_event(dg.AssetMaterialization(asset_key=sibling_key(context, "inference_service"), description=reason,
                                              metadata={**serving_metadata(result), "reason": reason}))


@dg.asset(group_name="deployment", code_version="2", pool=RELEASE_POOL,
          description="The champion served: canary at 20%, smoke-tested, then 100% (or rolled back); with "
                      "the online A/B gate (config ab) left as a canary or shadow for online_evaluation.")
def inference_service(context: dg.AssetExecutionContext, config: RolloutConfig,
                      serving: dg.ResourceParam[ServingBackend], registry: dg.ResourceParam[ModelRegistry],
                      champion_model: dict) -> dg.Output[dict]:
    problems = config.ab.problems()  # before anything serving changes
    if problems:
        raise dg.Failure(description="invalid A/B config (inference_service config ab): " + "; ".join(problems)
                                     + "; nothing serving changed")
    if config.ab.mode != "off" and not serving.supports_online_gate:
        raise dg.Failure(description=f"ab.mode {config.ab.mode!r}: the online A/B gate is not implemented for "
                                     f"{serving.kind}; nothing serving changed")
    version = champion_model["version"]
    current = registry.version_of(CHAMPION)
    if current != version:
        raise dg.Failure(description=(
            f"v{version}, promoted by this run, is no longer @champion (now v{current or 'none'}): "
            "not rolling it out; the run that moved @champion serves its own version"))
    try:
        result = serving.roll_out(version, config, log=context.log.info)
    except RolloutFailed as failed:
        restored = registry.rollback(dagster_run_id=context.run.run_id, reason=f"canary of v{version} failed: {failed}") \
            if registry.version_of("previous") else []
        if restored:
            record_champion(context, registry, restored[0].to_version, f"canary of v{version} failed; rolled back")
        champion = restored[0].to_version if restored else registry.version_of(CHAMPION)
        context.log_event(dg.AssetObservation(
            asset_key=sibling_key(context, "inference_service"),
            description=f"canary of v{version} rolled back: the stable revision keeps serving",
            metadata={"failed_version": version, "champion": champion or "none", "canary_percent": 0}))
        raise dg.Failure(description=f"rollout of v{version} rolled back: {failed}",
                         metadata={"smoke_test": dg.MetadataValue.json(failed.smoke),
                                   "champion_restored_to": restored[0].to_version if restored else "none"}) from failed
    return dg.Output(result, data_version=dg.DataVersion(f"v{result['model_version']}"),
                     metadata=serving_metadata(result))


@dg.asset_check(asset=inference_service, description="The endpoint answers and serves the champion.")
def serving_healthy(serving: dg.ResourceParam[ServingBackend], registry: dg.ResourceParam[ModelRegistry]
                    ) -> dg.AssetCheckResult:
    health = serving.health(registry.version_of(CHAMPION))
    return dg.AssetCheckResult(passed=health["healthy"], description=health["summary"],
                               metadata={"health": dg.MetadataValue.json(health)})


@dg.asset(group_name="deployment", code_version="1", deps=["feature_store"],
          description="Every entity's latest snapshot scored by @champion via offline retrieval; DVC-versioned Parquet.")
def batch_predictions(context: dg.AssetExecutionContext, settings: dg.ResourceParam[Settings],
                      features: dg.ResourceParam[FeatureStoreClient], registry: dg.ResourceParam[ModelRegistry],
                      versioner: dg.ResourceParam[DataVersioner], dataset: pd.DataFrame,
                      champion_model: dict) -> dg.Output[dict]:
    spec = settings.dataset_spec()
    version = registry.version_of(CHAMPION) or champion_model["version"]
    latest = dataset.sort_values(spec.timestamp).groupby(spec.entity, as_index=False).tail(1)
    frame = features.historical_features(latest[[spec.entity, spec.timestamp]])
    scores = registry.load_model(version).predict_proba(frame[spec.features])[:, 1]
    table = pd.DataFrame({spec.entity: frame[spec.entity].to_numpy(), spec.timestamp: frame[spec.timestamp].to_numpy(),
                          "score": scores, "prediction": (scores >= 0.5).astype(int), "model_version": str(version)})
    recorded = versioner.commit_table(table, "batch_predictions", message=f"batch scores by {registry.name}/{version}")
    context.log.info(f"scored {len(table):,} entities with v{version}")
    summary: dict[str, Any] = {"rows": len(table), "model_version": str(version), "md5": recorded.md5,
                               "path": str(versioner.root / recorded.path), "positive_rate": float(table.prediction.mean())}
    return dg.Output(summary, data_version=dg.DataVersion(recorded.md5), metadata={**summary, "dvc_tag": recorded.tag})
