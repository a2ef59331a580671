"""The Feast store for real: online values equal the latest offline ones, and the training frame
is point-in-time correct (no feature newer than the label leaks in)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from mlops_assets.features.assets import write_offline_table
from mlops_assets.features.store import FeatureStoreClient
from tests.conftest import make_platform, materialized


@pytest.fixture(scope="module")
def feature_platform(tmp_path_factory):
    platform = make_platform(tmp_path_factory.mktemp("features"))
    result = platform.materialize(["dataset", "feature_table", "feature_store"],
                                  {"ops": {"dataset": {"config": {"rows": 3_000, "seed": 21}}}})
    assert result.success and materialized(result) == {"dataset", "feature_table", "feature_store"}
    return platform


def test_online_features_equal_the_latest_offline_values(feature_platform):
    settings = feature_platform.settings
    spec = settings.dataset_spec()
    offline = pd.read_parquet(settings.feast_offline_path)
    latest = offline.sort_values(spec.timestamp).groupby(spec.entity).tail(1).set_index(spec.entity)
    sample = latest.sample(25, random_state=0).index.tolist()
    online = feature_platform.resource("features").online_features(sample).set_index(spec.entity)
    for entity in sample:
        for column in spec.features:
            expected, got = latest.at[entity, column], online.at[entity, column]
            if column in spec.categorical:
                assert got == expected, (entity, column)
            else:
                assert float(got) == pytest.approx(float(expected)), (entity, column)


def test_unknown_entity_has_no_online_values(feature_platform):
    spec = feature_platform.settings.dataset_spec()
    online = feature_platform.resource("features").online_features([987_654_321])
    assert online[list(spec.features)].isna().all(axis=None)


def test_second_materialization_is_incremental(feature_platform):
    result = feature_platform.materialize(["feature_store"])
    assert result.success
    [event] = result.get_asset_materialization_events()
    assert event.step_materialization_data.materialization.metadata["materialization"].value == "incremental"


def test_point_in_time_join_never_uses_features_from_after_the_label(tmp_path):
    platform = make_platform(tmp_path)
    settings = platform.settings
    spec = settings.dataset_spec()
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    base = {"tenure_months": 10, "total_charges": 500.0, "support_calls": 1, "data_usage_gb": 5.0,
            "num_products": 2, "contract": "one_year", "payment_method": "card", "internet_service": "dsl"}
    features = pd.DataFrame([
        {spec.entity: 1, spec.timestamp: t0, "monthly_charges": 50.0, **base},
        # a price change recorded AFTER the label's timestamp: must not leak into that row
        {spec.entity: 1, spec.timestamp: t0 + timedelta(days=10), "monthly_charges": 999.0, **base},
    ])
    features[spec.timestamp] = features[spec.timestamp].astype("datetime64[ns, UTC]")
    write_offline_table(features, settings.feast_offline_path)
    client = FeatureStoreClient(settings)
    client.apply()
    labels = pd.DataFrame({spec.entity: [1, 1], spec.timestamp: [t0 + timedelta(days=5), t0 + timedelta(days=11)],
                           spec.target: [0, 1]})
    frame = client.historical_features(labels).sort_values(spec.timestamp)
    assert frame["monthly_charges"].tolist() == [50.0, 999.0]
