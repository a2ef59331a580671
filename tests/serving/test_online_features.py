"""Fresh online features: the `online_features` asset refreshes the online store between retrains;
an entity whose features are older than the feature view's TTL gets a 404 saying so, and the
transformers count unknown and expired entities."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def _misses(deployment) -> dict[str, float]:
    """mlops_feature_lookup_misses_total by reason, summed over every transformer."""
    from mlops_assets.serving.smoke import scrape

    totals = {"unknown": 0.0, "expired": 0.0}
    for revision in deployment.backend.status()["revisions"].values():
        for replica in (revision or {}).get("replicas", []):
            for (name, labels), value in scrape(replica["transformer"]["url"]).items():
                if name == "mlops_feature_lookup_misses_total":
                    totals[dict(labels)["reason"]] += value
    return totals


def _row(world, entity_id: int, when: datetime) -> pd.DataFrame:
    spec = world.settings.dataset_spec()
    row = world.data[[spec.entity, spec.timestamp, *spec.features]].iloc[[0]].copy()
    row[spec.entity] = entity_id
    row[spec.timestamp] = pd.Timestamp(when)
    return row


def test_expired_and_unknown_entities_get_a_404_saying_which_and_are_counted(world, deployment):
    from mlops_assets.features.store import FEATURE_VIEW, FeatureStoreClient

    ttl_days = world.settings.feature_ttl_days
    old = datetime.now(timezone.utc) - timedelta(days=ttl_days + 2)
    FeatureStoreClient(world.settings).store.write_to_online_store(FEATURE_VIEW, _row(world, 900001, old))
    before = _misses(deployment)
    with httpx.Client(timeout=30) as client:
        expired = client.post(deployment.predict_url(), json={"instances": [{"customer_id": 900001}]})
        unknown = client.post(deployment.predict_url(), json={"instances": [{"customer_id": 900002}]})
        wrong_type = client.post(deployment.predict_url(), json={"instances": [{"customer_id": "900001"}]})
    assert expired.status_code == 404
    assert f"customer_id [900001]: features expired" in expired.json()["error"]
    assert f"older than the feature view's TTL of {ttl_days:g} days" in expired.json()["error"]
    assert unknown.status_code == 404 and "unknown customer_id [900002]" in unknown.json()["error"]
    assert wrong_type.status_code == 400 and "must be an integer id, got string" in wrong_type.json()["error"]
    after = _misses(deployment)
    assert after["expired"] - before["expired"] == 1 and after["unknown"] - before["unknown"] == 1


def test_online_features_asset_refreshes_the_store_without_retraining(world, deployment):
    import dagster as dg

    from mlops_assets.features.online import online_features
    from mlops_assets.features.store import FeatureStoreClient

    new_id = 900003
    offline = Path(world.settings.feast_offline_path)
    table = pd.read_parquet(offline)
    fresh = _row(world, new_id, datetime.now(timezone.utc) - timedelta(hours=1))
    fresh[world.settings.dataset_spec().timestamp] = fresh[world.settings.dataset_spec().timestamp].astype(
        table[world.settings.dataset_spec().timestamp].dtype)
    pd.concat([table, fresh], ignore_index=True).to_parquet(offline, index=False)
    url = deployment.predict_url()
    assert httpx.post(url, json={"instances": [{"customer_id": new_id}]}).status_code == 404

    result = dg.materialize([online_features], resources={"features": FeatureStoreClient(world.settings)})
    assert result.success
    metadata = result.asset_materializations_for_node("online_features")[0].metadata
    assert metadata["materialization"].value == "incremental"

    answer = httpx.post(url, json={"instances": [{"customer_id": new_id}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] in world.versions.values()
