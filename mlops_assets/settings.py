"""The one place that reads the environment.

Every other module asks :func:`get_settings` for paths, URIs and profile-dependent choices, so a
profile switch (``MLOPS_PROFILE``) or a different state directory (``MLOPS_HOME``) is one setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("local", "k8s")

# Settings the k8s profile cannot run without; checked when the definitions load, not at first run.
K8S_REQUIRED = {
    "MLOPS_S3_BUCKET": "bucket for DVC data, MLflow artifacts, IO manager and Feast offline store",
    "MLFLOW_TRACKING_URI": "MLflow tracking server URI",
    "MLOPS_K8S_NAMESPACE": "namespace for Dagster jobs and the InferenceService",
    "MLOPS_IMAGE": "container image of this code location and the serving classes",
}

# How the deploy step reaches the cluster (k8s profile): ``apply`` through the Kubernetes API, or
# ``gitops``: write + commit the release for Argo CD.
DEPLOY_MODES = ("apply", "gitops")
IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    profile: str
    home: Path
    model_name: str = "churn"
    feature_service: str = "churn_v1"
    mlflow_tracking_uri_override: str | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    k8s_namespace: str = "mlops"
    image: str | None = None
    service_account: str = "mlops-deployer"
    redis_connection: str = "redis:6379"
    dataset_config: str | None = None
    drift_threshold: float = 0.3  # share of drifted columns that triggers a retrain
    retrain_cooldown_minutes: float = 10.0  # against retraining storms
    # --- the deploy step in the k8s profile ---
    k8s_api_url: str = "https://kubernetes.default.svc"
    k8s_token_file: str = IN_CLUSTER_TOKEN_FILE
    k8s_ca_file: str = IN_CLUSTER_CA_FILE
    deploy_mode: str = "apply"
    gitops_path: Path | None = None
    gitops_remote: str | None = None
    ready_timeout_s: float = 600.0
    ready_poll_s: float = 5.0
    feature_ttl_days: float = 730.0  # Feast feature view TTL: older online features are expired
    # --- local serving ---
    serving_replicas: int = 2  # predictor+transformer pairs per revision
    serving_hold_s: float = 30.0  # how long the ingress holds a request while a revision has no ready replica
    extra: Mapping[str, str] = field(default_factory=dict)

    # --- state directories (all inside MLOPS_HOME) ---------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_repo(self) -> Path:
        """Git + DVC workspace holding the dataset's .dvc files; each version is a commit and a tag."""
        return self.home / "data"

    @property
    def dvc_remote(self) -> str:
        if self.profile == "k8s":
            return f"s3://{self.s3_bucket}/dvc"
        return str(self.home / "dvc-remote")

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri_override:
            return self.mlflow_tracking_uri_override
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        if self.profile == "k8s":
            return f"s3://{self.s3_bucket}/mlflow"
        return (self.mlflow_dir / "artifacts").as_uri()

    @property
    def feature_repo(self) -> Path:
        return PROJECT_ROOT / "feature_repo"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def feast_offline_path(self) -> str:
        """Parquet file the Feast FileSource reads (the `feature_table` asset writes it)."""
        if self.profile == "k8s":
            return f"s3://{self.s3_bucket}/feast/churn_features.parquet"
        return str(self.feast_dir / "offline" / "churn_features.parquet")

    @property
    def serving_dir(self) -> Path:
        return self.home / "serving"

    @property
    def prediction_log_dir(self) -> Path:
        return self.serving_dir / "prediction-log"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def io_manager_dir(self) -> Path:
        return self.home / "io"

    def dataset_spec(self):
        """The demo churn spec, or the bring-your-own config named by MLOPS_DATASET_CONFIG."""
        from mlops_assets.data.spec import DEMO_SPEC, load_spec

        return load_spec(self.dataset_config) if self.dataset_config else DEMO_SPEC

    def ensure_dirs(self) -> None:
        for path in (self.dagster_home, self.logs_dir, self.mlflow_dir, self.feast_dir,
                     self.serving_dir, self.reports_dir, self.io_manager_dir):
            path.mkdir(parents=True, exist_ok=True)

    def s3_client_env(self) -> dict[str, str]:
        """What libraries that read S3 settings from the environment need (MLflow's artifact store,
        boto3/s3fs through ``AWS_ENDPOINT_URL_S3``): the endpoint of an S3-compatible server, if set."""
        if not self.s3_endpoint_url:
            return {}
        return {"MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url, "AWS_ENDPOINT_URL_S3": self.s3_endpoint_url}

    def export_s3_env(self) -> None:
        """Make in-process readers of the environment (MLflow's S3 artifact repository) see
        :meth:`s3_client_env`; values the operator set explicitly are kept."""
        for name, value in self.s3_client_env().items():
            os.environ.setdefault(name, value)

    def env_for_subprocess(self) -> dict[str, str]:
        """Environment that makes a child process (server, daemon) resolve the same settings."""
        env = dict(os.environ)
        env.update({"MLOPS_PROFILE": self.profile, "MLOPS_HOME": str(self.home),
                    "DAGSTER_HOME": str(self.dagster_home)})
        # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI into this process's environment;
        # the child must resolve *these* settings' store, not whichever one this process touched last.
        env.pop("MLFLOW_REGISTRY_URI", None)
        # Importing Feast points these at a temporary directory of this process (removed when it
        # exits); a child that inherits them writes its metrics there and fails once it is gone.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("PROMETHEUS_MULTIPROCESS_DIR", None)
        if self.mlflow_tracking_uri_override:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri_override
        else:
            env.pop("MLFLOW_TRACKING_URI", None)
        for name, value in self.s3_client_env().items():
            env.setdefault(name, value)
        return env

    def serving_env(self) -> dict[str, str]:
        """The whole environment of a local serving process: built from these settings, plus the
        operator's own ``MLOPS_*``/``AWS_*``/``MLFLOW_*`` settings and basic system variables. Nothing else is
        inherited (e.g. not the ``PROMETHEUS_MULTIPROC_DIR`` that importing Feast sets)."""
        env = {name: value for name, value in os.environ.items()
               if name in SYSTEM_VARIABLES or name.startswith(("MLOPS_", "AWS_", "MLFLOW_"))}
        # mlflow.set_tracking_uri() exports these into the launcher's environment: never inherit them.
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("MLFLOW_REGISTRY_URI", None)
        env.update({"MLOPS_PROFILE": self.profile, "MLOPS_HOME": str(self.home),
                    "DAGSTER_HOME": str(self.dagster_home), "MLOPS_MODEL_NAME": self.model_name,
                    "MLOPS_SERVING_REPLICAS": str(self.serving_replicas),
                    "MLOPS_SERVING_HOLD_S": str(self.serving_hold_s),
                    "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        if self.dataset_config:
            env["MLOPS_DATASET_CONFIG"] = self.dataset_config
        if self.mlflow_tracking_uri_override:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri_override
        env.update(self.s3_client_env())
        return env


SYSTEM_VARIABLES = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                    "PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}


def _resolve_home(env: Mapping[str, str]) -> Path:
    raw = env.get("MLOPS_HOME") or str(PROJECT_ROOT / ".mlops")
    return Path(raw).expanduser().resolve()


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default)
    if not value > 0:
        raise SettingsError(f"{name}={env.get(name)!r} must be a number of seconds greater than 0")
    return value


def _days(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default)
    if not value > 0:
        raise SettingsError(f"{name}={env.get(name)!r} must be a number of days greater than 0")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = _number(env, name, default)
    if not (value >= 1 and float(value).is_integer()):
        raise SettingsError(f"{name}={env.get(name)!r} must be a whole number of at least 1")
    return int(value)


def get_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment (or the mapping given, for tests)."""
    env = os.environ if env is None else env
    profile = env.get("MLOPS_PROFILE", "local").strip() or "local"
    if profile not in PROFILES:
        raise SettingsError(f"MLOPS_PROFILE={profile!r} is not one of {', '.join(PROFILES)}")
    deploy_mode = env.get("MLOPS_DEPLOY_MODE", "apply").strip() or "apply"
    if deploy_mode not in DEPLOY_MODES:
        raise SettingsError(f"MLOPS_DEPLOY_MODE={deploy_mode!r} is not one of {', '.join(DEPLOY_MODES)}")
    if profile == "k8s":
        required = dict(K8S_REQUIRED)
        if deploy_mode == "gitops":
            required["MLOPS_GITOPS_PATH"] = "release file in a git checkout that Argo CD syncs (gitops mode)"
        missing = [f"{name} ({why})" for name, why in required.items() if not env.get(name)]
        if missing:
            raise SettingsError("the k8s profile needs these settings: " + "; ".join(missing))
    gitops_path = env.get("MLOPS_GITOPS_PATH")
    return Settings(
        profile=profile,
        home=_resolve_home(env),
        model_name=env.get("MLOPS_MODEL_NAME", "churn"),
        mlflow_tracking_uri_override=env.get("MLFLOW_TRACKING_URI") or None,
        s3_bucket=env.get("MLOPS_S3_BUCKET") or None,
        s3_endpoint_url=env.get("MLOPS_S3_ENDPOINT_URL") or None,
        k8s_namespace=env.get("MLOPS_K8S_NAMESPACE", "mlops"),
        image=env.get("MLOPS_IMAGE") or None,
        service_account=env.get("MLOPS_K8S_SERVICE_ACCOUNT", "mlops-deployer"),
        redis_connection=env.get("MLOPS_REDIS", "redis:6379"),
        dataset_config=env.get("MLOPS_DATASET_CONFIG") or None,
        drift_threshold=_number(env, "MLOPS_DRIFT_THRESHOLD", 0.3),
        retrain_cooldown_minutes=_number(env, "MLOPS_RETRAIN_COOLDOWN_MINUTES", 10.0),
        k8s_api_url=env.get("MLOPS_K8S_API") or "https://kubernetes.default.svc",
        k8s_token_file=env.get("MLOPS_K8S_TOKEN_FILE") or IN_CLUSTER_TOKEN_FILE,
        k8s_ca_file=env.get("MLOPS_K8S_CA_FILE") or IN_CLUSTER_CA_FILE,
        deploy_mode=deploy_mode,
        gitops_path=Path(gitops_path).expanduser().resolve() if gitops_path else None,
        gitops_remote=env.get("MLOPS_GITOPS_REMOTE") or None,
        ready_timeout_s=_seconds(env, "MLOPS_READY_TIMEOUT_S", 600.0),
        ready_poll_s=_seconds(env, "MLOPS_READY_POLL_S", 5.0),
        feature_ttl_days=_days(env, "MLOPS_FEATURE_TTL_DAYS", 730.0),
        serving_replicas=_count(env, "MLOPS_SERVING_REPLICAS", 2),
        serving_hold_s=_seconds(env, "MLOPS_SERVING_HOLD_S", 30.0),
    )
