"""The MLflow tracking store and model registry, through aliases only.

`@challenger` is the newest candidate, `@champion` what serves, `@previous` the champion before it
(for rollback). Every alias move leaves an audit entry as a tag on the registered model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mlops_assets.atomic import file_lock
from mlops_assets.settings import Settings

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
AUDIT_PREFIX = "audit."
EXPERIMENT = "churn-training"


class RegistryError(RuntimeError):
    """The registry is unreachable or in a state that forbids the operation; the message says which."""


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: str | None
    to_version: str | None
    at: str
    dagster_run_id: str
    reason: str


class ModelRegistry:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.name = settings.model_name
        self._client = None
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------------
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            else:
                # MLflow's fluent API (start_run, load_model) reads a process-wide URI, which a
                # registry for another MLOPS_HOME in the same process may have moved since.
                self._activate()
            return self._client

    def _activate(self) -> None:
        import mlflow

        uri = self.settings.mlflow_tracking_uri
        mlflow.set_tracking_uri(uri)  # a no-op when already set
        mlflow.set_registry_uri(uri)

    def _connect(self):
        from mlflow import MlflowClient

        uri = self.settings.mlflow_tracking_uri
        self.settings.export_s3_env()  # MLflow's S3 artifact store reads its endpoint from the environment
        self._activate()
        if not uri.startswith("sqlite:///"):
            return MlflowClient(tracking_uri=uri, registry_uri=uri)
        # the first use creates and migrates the database: two processes doing it at once collide
        with file_lock(self.settings.mlflow_dir / ".init.lock"):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
        return client

    def ensure_reachable(self) -> None:
        """Fail fast with the URI in the message (MLflow's own client retries for minutes)."""
        uri = self.settings.mlflow_tracking_uri
        if uri.startswith(("http://", "https://")):
            import httpx

            try:
                httpx.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
            except httpx.HTTPError as exc:
                raise RegistryError(f"MLflow tracking server {uri} cannot be reached: {exc}") from exc
            return
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # the store raises driver-specific errors
            raise RegistryError(f"MLflow tracking store {uri} cannot be opened: {exc}") from exc

    def experiment_id(self) -> str:
        existing = self.client.get_experiment_by_name(EXPERIMENT)
        if existing is not None:
            return existing.experiment_id
        location = f"{self.settings.mlflow_artifact_root.rstrip('/')}/{EXPERIMENT}"
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=location)
        except Exception:  # an overlapping run created it first
            existing = self.client.get_experiment_by_name(EXPERIMENT)
            if existing is None:
                raise
            return existing.experiment_id

    # --- versions and aliases -----------------------------------------------------------------
    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
        """A new version with `@challenger`; on any failure the half-made version is deleted."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            try:
                self.client.create_registered_model(self.name, description="churn classifier, promoted by alias")
            except Exception:  # an overlapping run created it first (the stores raise driver-specific errors)
                self.client.get_registered_model(self.name)  # raises if it really does not exist
        # a tracking server checks a `models:/<model id>` source against the model id it names
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        version = self.client.create_model_version(self.name, model_uri, run_id=run_id, tags=tags,
                                                   model_id=model_id)
        try:
            self._wait_ready(version.version)
            self.client.set_registered_model_alias(self.name, CHALLENGER, version.version)
        except Exception:
            self.client.delete_model_version(self.name, version.version)
            raise
        return str(version.version)

    def _wait_ready(self, version: str) -> None:
        from mlflow.entities.model_registry.model_version_status import (
            ModelVersionStatus,
        )

        status = self.client.get_model_version(self.name, version).status
        if status != ModelVersionStatus.to_string(ModelVersionStatus.READY):
            raise RegistryError(f"model version {self.name}/{version} is {status}, not READY")

    def version_of(self, alias: str) -> str | None:
        """The version an alias points at, None if the alias is not set."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException:
            return None
        version = model.aliases.get(alias)
        return str(version) if version is not None else None

    def broken_aliases(self) -> dict[str, str]:
        """Aliases pointing at versions that no longer exist: {alias: version}."""
        from mlflow.exceptions import MlflowException

        broken = {}
        for alias in (CHAMPION, CHALLENGER, PREVIOUS):
            version = self.version_of(alias)
            if version is None:
                continue
            try:
                self.client.get_model_version(self.name, version)
            except MlflowException:
                broken[alias] = version
        return broken

    def version_exists(self, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.name, version)
            return True
        except MlflowException:
            return False

    def move_alias(self, alias: str, version: str, reason: str, dagster_run_id: str) -> AliasMove:
        if not self.version_exists(version):
            raise RegistryError(f"refusing to point @{alias} at {self.name}/{version}: that version does not exist")
        move = AliasMove(alias=alias, from_version=self.version_of(alias), to_version=version,
                         at=datetime.now(timezone.utc).isoformat(), dagster_run_id=dagster_run_id, reason=reason)
        self.client.set_registered_model_alias(self.name, alias, version)
        self._audit(move)
        return move

    def remove_alias(self, alias: str, reason: str, dagster_run_id: str) -> AliasMove | None:
        current = self.version_of(alias)
        if current is None:
            return None
        move = AliasMove(alias=alias, from_version=current, to_version=None,
                         at=datetime.now(timezone.utc).isoformat(), dagster_run_id=dagster_run_id, reason=reason)
        self.client.delete_registered_model_alias(self.name, alias)
        self._audit(move)
        return move

    def _audit(self, move: AliasMove) -> None:
        key = f"{AUDIT_PREFIX}{move.at.replace(':', '').replace('+', 'Z')}.{move.alias}"
        self.client.set_registered_model_tag(self.name, key, json.dumps(move.__dict__))

    def audit_log(self) -> list[AliasMove]:
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException:
            return []
        entries = [AliasMove(**json.loads(value)) for key, value in tags.items() if key.startswith(AUDIT_PREFIX)]
        return sorted(entries, key=lambda move: move.at)

    # --- promotion ----------------------------------------------------------------------------
    def promote(self, version: str, reason: str, dagster_run_id: str) -> list[AliasMove]:
        """`@previous` <- old champion, then `@champion` <- version. Idempotent.

        The order means an interruption leaves both aliases on existing versions.
        """
        old = self.version_of(CHAMPION)
        if old == version:
            return []
        moves = []
        if old is not None and self.version_exists(old):
            moves.append(self.move_alias(PREVIOUS, old, f"replaced by {version}: {reason}", dagster_run_id))
        moves.append(self.move_alias(CHAMPION, version, reason, dagster_run_id))
        return moves

    def rollback(self, dagster_run_id: str, reason: str = "manual rollback") -> list[AliasMove]:
        previous = self.version_of(PREVIOUS)
        if previous is None:
            raise RegistryError(f"cannot roll back {self.name}: no @previous version is recorded")
        moves = [self.move_alias(CHAMPION, previous, reason, dagster_run_id)]
        removed = self.remove_alias(PREVIOUS, f"consumed by rollback to {previous}", dagster_run_id)
        return moves + ([removed] if removed else [])

    # --- models -------------------------------------------------------------------------------
    def load_model(self, version: str):
        import mlflow.sklearn

        self.client  # sets the tracking and registry URIs
        return mlflow.sklearn.load_model(f"models:/{self.name}/{version}")

    def version_info(self, version: str) -> dict[str, Any]:
        model_version = self.client.get_model_version(self.name, version)
        run = self.client.get_run(model_version.run_id)
        return {"version": str(version), "run_id": model_version.run_id, "version_tags": dict(model_version.tags),
                "run_tags": dict(run.data.tags), "metrics": dict(run.data.metrics), "source": model_version.source}

    def tag_version(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))
