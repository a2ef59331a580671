"""Feast definitions, in dependency order: entity, source, feature view, versioned feature service.

The columns come from the dataset spec (the churn demo or a bring-your-own config), so training
and serving read the same definitions. Feast imports every .py file here: keep nothing else here.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from mlops_assets.settings import get_settings

# The platform injects its own settings when it loads this file; the feast CLI reads the environment.
settings = globals().get("injected_settings") or get_settings()
spec = settings.dataset_spec()

customer = Entity(name="customer", join_keys=[spec.entity], value_type=ValueType.INT64,
                  description="the scored entity")

customer_source = FileSource(
    name="customer_features_source",
    path=settings.feast_offline_path,
    timestamp_field=spec.timestamp,
    s3_endpoint_override=settings.s3_endpoint_url or None,
)


def _dtype(column: str):
    if column in spec.categorical:
        return String
    return Int64 if column in spec.integer else Float64


customer_features = FeatureView(
    name="customer_features",
    entities=[customer],
    ttl=timedelta(days=settings.feature_ttl_days),  # older features are expired for serving
    schema=[Field(name=column, dtype=_dtype(column)) for column in spec.features],
    source=customer_source,
    online=True,
)

churn_v1 = FeatureService(
    name=settings.feature_service,
    features=[customer_features],
    description="features the model is trained and served on (version 1)",
)
