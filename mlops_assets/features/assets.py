"""Feature layer: the offline feature table and the Feast store (apply + materialize)."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

from mlops_assets.atomic import atomic_path
from mlops_assets.settings import Settings

from .store import FeatureStoreClient


def write_offline_table(frame: pd.DataFrame, destination: str) -> None:
    """Write atomically so Feast never reads half a file."""
    if destination.startswith("s3://"):
        frame.to_parquet(destination, index=False)
        return
    with atomic_path(Path(destination)) as tmp:
        frame.to_parquet(tmp, index=False)


@dg.asset(group_name="features", code_version="1",
          description="Feature columns of the dataset, written to the Feast offline source.")
def feature_table(settings: dg.ResourceParam[Settings], dataset: pd.DataFrame) -> dg.Output[dict]:
    spec = settings.dataset_spec()
    frame = dataset[[spec.entity, spec.timestamp, *spec.features]]
    write_offline_table(frame, settings.feast_offline_path)
    summary = {"path": settings.feast_offline_path, "rows": len(frame),
               "start": frame[spec.timestamp].min().isoformat(), "end": frame[spec.timestamp].max().isoformat()}
    return dg.Output(summary, metadata={**summary, "features": list(spec.features)})


@dg.asset(group_name="features", code_version="1",
          description="Feast definitions applied and the online store materialized up to the newest row.")
def feature_store(context: dg.AssetExecutionContext, features: dg.ResourceParam[FeatureStoreClient],
                  feature_table: dict) -> dg.MaterializeResult:
    applied = features.apply()
    start = pd.Timestamp(feature_table["start"]).to_pydatetime()
    end = pd.Timestamp(feature_table["end"]).to_pydatetime() + timedelta(seconds=1)
    mode = features.materialize(start, end)
    context.log.info(f"applied {len(applied)} Feast objects; {mode} materialization up to {end}")
    return dg.MaterializeResult(metadata={
        "applied": applied, "materialization": mode, "materialized_until": end.isoformat(),
        "feature_service": features.settings.feature_service,
        "online_store": str(features.settings.feast_dir / "online.db"),
    })
