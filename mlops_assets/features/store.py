"""One door to the Feast store: training's point-in-time retrieval and serving's online lookup.

Feast is imported lazily (it costs seconds), through ``feast_import.import_feast`` (without typeguard's
instrumentation); the feature definitions live in `feature_repo/`.
"""

from __future__ import annotations

import importlib.util
import string
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd
import yaml

from mlops_assets.features.feast_import import import_feast
from mlops_assets.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureStore

FEATURE_VIEW = "customer_features"


def repo_config_dict(settings: Settings) -> dict:
    """feature_store.yaml for the profile, with ${MLOPS_FEAST_DIR} filled in from settings."""
    name = {"local": "feature_store.yaml", "stack": "feature_store.stack.yaml"}.get(settings.profile,
                                                                                  "feature_store.k8s.yaml")
    path = settings.feature_repo / name
    if not path.exists():  # the k8s and stack variants live with the deployment files
        path = settings.feature_repo.parent / "deploy" / "feast" / name
    text = path.read_text()
    values = {"MLOPS_S3_BUCKET": settings.s3_bucket or "", "MLOPS_REDIS": settings.redis_connection,
              "MLOPS_FEAST_REGISTRY_URL": settings.feast_registry_url or ""}
    if "${MLOPS_FEAST_DIR}" in text:  # only the local files need a folder (in stack none is made)
        values["MLOPS_FEAST_DIR"] = str(settings.feast_dir)
    config = yaml.safe_load(string.Template(text).safe_substitute(values))
    if settings.model_prefix:  # a model of MLOPS_MODELS_DIR: its own Feast project in shared registries
        config["project"] = f"{config['project']}_{settings.model_name}"
    return config


def open_store(settings: Settings) -> "FeatureStore":
    import_feast()
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    settings.export_s3_env()  # the S3 offline store reads its endpoint and credentials from the environment
    values = repo_config_dict(settings)
    if isinstance(values.get("registry"), str):  # a registry file (local profile): its folder must exist
        settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(**values)
    config.repo_path = settings.feature_repo
    return FeatureStore(config=config)


def load_definitions(settings: Settings) -> list:
    """Import feature_repo/definitions.py afresh (it reads the settings) and return its Feast objects."""
    import_feast()
    from feast import Entity, FeatureService, FeatureView, FileSource

    path = settings.feature_repo / "definitions.py"
    spec = importlib.util.spec_from_file_location("_mlops_feature_repo_definitions", path)
    module = importlib.util.module_from_spec(spec)
    module.injected_settings = settings
    spec.loader.exec_module(module)
    kinds = (Entity, FileSource, FeatureView, FeatureService)
    return [obj for obj in vars(module).values() if isinstance(obj, kinds)]


class FeatureStoreClient:
    """Shared by training (historical) and serving (online); opens the store on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._store = None
        self._lock = threading.Lock()
        self._spec = None

    @property
    def spec(self):
        """The dataset spec, read once: with a bring-your-own config, ``Settings.dataset_spec`` parses a
        YAML file, which every online lookup of the serving hot path used to do."""
        if self._spec is None:
            self._spec = self.settings.dataset_spec()
        return self._spec

    @property
    def store(self) -> "FeatureStore":
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings)
            return self._store

    def apply(self) -> list[str]:
        objects = load_definitions(self.settings)
        self.store.apply(objects)
        return sorted(f"{type(obj).__name__}:{obj.name}" for obj in objects)

    def materialize(self, start: datetime, end: datetime) -> str:
        """Incremental from the last materialized point; the first run starts at ``start``.

        (Feast's own incremental start is "now - ttl", which skips back-dated tables.)
        """
        view = self.store.get_feature_view(FEATURE_VIEW)
        if view.materialization_intervals:
            self.store.materialize_incremental(end_date=end)
            return "incremental"
        self.store.materialize(start_date=start, end_date=end)
        return "initial"

    def feature_refs(self) -> list[str]:
        service = self.store.get_feature_service(self.settings.feature_service)
        return [f"{projection.name}:{feature.name}" for projection in service.feature_view_projections
                for feature in projection.features]

    def historical_features(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time join: each row gets the latest feature values at or before its timestamp."""
        service = self.store.get_feature_service(self.settings.feature_service)
        return self.store.get_historical_features(entity_df=entity_df, features=service).to_df()

    def online_response(self, entity_ids: Sequence[int], features: Iterable[str] | None = None):
        """Feast's OnlineResponse: values, statuses and event timestamps per requested id."""
        spec = self.spec
        refs = list(features) if features is not None else self.store.get_feature_service(
            self.settings.feature_service)
        rows = [{spec.entity: int(entity_id)} for entity_id in entity_ids]
        return self.store.get_online_features(features=refs, entity_rows=rows)

    def online_columns(self, entity_ids: Sequence[int], features: Iterable[str] | None = None
                       ) -> dict[str, list]:
        """Latest values per id as {column: [value per id]}; unknown ids get None.

        The serving hot path reads this directly: a DataFrame would cost more than the lookup."""
        return self.online_response(entity_ids, features).to_dict()

    def feature_view_ttl(self) -> timedelta | None:
        """How old an entity's features may be before they count as expired (None: never)."""
        ttl = self.store.get_feature_view(FEATURE_VIEW).ttl
        return ttl if ttl else None

    def online_features(self, entity_ids: Sequence[int], features: Iterable[str] | None = None
                        ) -> pd.DataFrame:
        """Latest values per id; unknown ids come back with missing values (None/NaN)."""
        return pd.DataFrame(self.online_columns(entity_ids, features))

