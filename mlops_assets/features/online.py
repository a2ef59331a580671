"""Fresh online features, independent of retraining: the ``online_features`` asset runs Feast's
incremental materialization (offline source -> online store, from the last materialized point up to
now) on its own schedule (``<model>_online_features_refresh``, mlops_assets.automation), so serving reads the newest feature rows between retrains."""

from datetime import datetime, timezone

import dagster as dg

from .store import FEATURE_VIEW, FeatureStoreClient

@dg.asset(group_name="features", code_version="1", deps=["feature_store"],
          description="Online store refreshed: incremental Feast materialization up to now (own schedule).")
def online_features(context: dg.AssetExecutionContext,
                    features: dg.ResourceParam[FeatureStoreClient]) -> dg.MaterializeResult:
    view = features.store.get_feature_view(FEATURE_VIEW)
    end = datetime.now(timezone.utc)
    mode = features.materialize(end - view.ttl, end)  # the start only matters on a first run
    context.log.info(f"{mode} materialization of {FEATURE_VIEW} up to {end.isoformat()}")
    return dg.MaterializeResult(metadata={
        "materialization": mode, "materialized_until": end.isoformat(), "feature_view": FEATURE_VIEW,
        "ttl_days": view.ttl.total_seconds() / 86400})
