"""The one place that reads the environment.

Every other module asks :func:`get_settings` for paths, URIs and profile-dependent choices, so a
profile switch (``MLOPS_PROFILE``) or a different state directory (``MLOPS_HOME``) is one setting.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from mlops_assets.catalog import Catalog, ModelSpec

from mlops_assets.env_values import (GITOPS_REQUIRED, K8S_REQUIRED, STACK_REQUIRED, SettingsError, read_env_file,
                                     count as _count, niceness as _niceness, number as _number, positive as _positive)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("local", "stack", "k8s")

STACK_ENV_FILE = PROJECT_ROOT / ".mlops-stack" / "stack.env"
# Library settings (boto3, s3fs, MLflow read them from the environment) passed on from stack.env.
LIBRARY_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")

# How the deploy step reaches the cluster (k8s profile): ``apply`` through the Kubernetes API, or
# ``gitops``: write + commit the release for Argo CD.
DEPLOY_MODES = ("apply", "gitops")
IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


_SCRATCH: list[Path] = []


def process_scratch() -> Path:
    """A fresh temporary directory for this process, removed when the process ends. In the stack
    profile every Dagster step runs in its own process, so no step reads another's local files."""
    if not _SCRATCH or not _SCRATCH[0].exists():
        _SCRATCH[:] = [Path(tempfile.mkdtemp(prefix=f"mlops-run-{os.getpid()}-"))]
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


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
    code_image: str | None = None
    serving_image: str | None = None
    service_account: str = "mlops-deployer"
    redis_connection: str = "redis:6379"
    dataset_config: str | None = None
    drift_threshold: float = 0.3  # share of drifted columns that triggers a retrain
    retrain_cooldown_minutes: float = 10.0  # against retraining storms
    # --- the deploy step in the k8s profile ---
    # how the deploy step reaches the API server: an explicit URL (+ token and CA files), else the
    # pod's service account (in-cluster), else a kubeconfig file (``KUBECONFIG`` or ~/.kube/config)
    k8s_api_url: str | None = None
    kubeconfig: str | None = None
    # set by Kubernetes in every pod: where the in-cluster API server is
    k8s_service_host: str | None = None
    k8s_service_port: str | None = None
    kube_context: str | None = None
    k8s_token_file: str = IN_CLUSTER_TOKEN_FILE
    k8s_ca_file: str = IN_CLUSTER_CA_FILE
    deploy_mode: str = "apply"
    gitops_path: Path | None = None
    gitops_remote: str | None = None
    argocd_app: str | None = None
    argocd_namespace: str = "argocd"
    ready_timeout_s: float = 600.0
    feature_ttl_days: float = 730.0  # Feast feature view TTL: older online features are expired
    # --- local serving ---
    serving_replicas: int = 2  # predictor+transformer pairs per revision
    serving_hold_s: float = 30.0  # how long the ingress holds a request while a revision has no ready replica
    serving_standby: int | None = None  # warm processes per role for the next rollout (None: one per replica)
    serving_standby_niceness: int = 10  # standby processes import at this niceness (0: normal priority)
    # --- the stack profile's services ---
    postgres_url: str | None = None
    data_git_url: str | None = None
    sink_url: str | None = None
    pushgateway_url: str | None = None
    service_timeout_s: float = 10.0  # a run fails this soon when a service is down
    extra: Mapping[str, str] = field(default_factory=dict)
    # --- the catalog of models (mlops_assets.catalog): a folder of specs, and the spec these settings serve
    models_dir: Path | None = None
    model: "ModelSpec | None" = None

    # --- models -----------------------------------------------------------------------------
    def catalog(self) -> "Catalog":
        """Every model of this code location (MLOPS_MODELS_DIR, else the built-in model)."""
        from mlops_assets.catalog import catalog_for

        return catalog_for(self)

    def for_model(self, model: "ModelSpec") -> "Settings":
        """These settings for one model of the catalog: its name, dataset, feature service, drift
        settings and (for a model from MLOPS_MODELS_DIR) its own state under ``MLOPS_HOME/models/<name>``."""
        return replace(self, model=model, model_name=model.name, feature_service=f"{model.name}_v1"
                       if model.path else self.feature_service,
                       drift_threshold=self.drift_threshold if model.drift_threshold is None else model.drift_threshold,
                       retrain_cooldown_minutes=(self.retrain_cooldown_minutes if model.cooldown_minutes is None
                                                 else model.cooldown_minutes))

    @property
    def model_home(self) -> Path:
        """Where this model's own state lives: ``MLOPS_HOME`` for the built-in model, else
        ``MLOPS_HOME/models/<name>`` (Dagster, MLflow and the logs of the platform stay shared)."""
        return self.home / "models" / self.model_name if self.model is not None and self.model.path else self.home

    @property
    def model_prefix(self) -> str:
        """Path segment that keeps this model's objects apart in shared stores (S3, Feast projects)."""
        return f"models/{self.model_name}/" if self.model is not None and self.model.path else ""

    @property
    def stateless(self) -> bool:
        """Runs keep nothing on local disk (``stack`` and ``k8s``): every state lives in a service."""
        return self.profile != "local"

    # --- state directories (inside MLOPS_HOME; in `stack`, run state in a throwaway directory) --
    @property
    def scratch_dir(self) -> Path:
        return process_scratch()

    @property
    def _run_state(self) -> Path:
        return self.scratch_dir / self.model_prefix if self.profile == "stack" else self.model_home

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def logs_dir(self) -> Path:
        return self.model_home / "logs"

    @property
    def data_repo(self) -> Path:
        """Git + DVC workspace holding the dataset's .dvc files; each version is a commit and a tag."""
        return self._run_state / "data"

    @property
    def dvc_remote(self) -> str:
        if self.stateless:
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
        if self.profile == "stack":  # proxied by the tracking server: clients speak HTTP only
            return "mlflow-artifacts:/"
        if self.profile == "k8s":
            return f"s3://{self.s3_bucket}/mlflow"
        return (self.mlflow_dir / "artifacts").as_uri()

    @property
    def feature_repo(self) -> Path:
        return PROJECT_ROOT / "feature_repo"

    @property
    def feast_dir(self) -> Path:
        return self._run_state / "feast"

    @property
    def feast_offline_path(self) -> str:
        """Parquet file the Feast FileSource reads (the `feature_table` asset writes it)."""
        if self.stateless:
            return f"s3://{self.s3_bucket}/feast/{self.model_prefix}churn_features.parquet"
        return str(self.feast_dir / "offline" / "churn_features.parquet")

    @property
    def serving_dir(self) -> Path:
        return self.model_home / "serving"

    @property
    def ingress_dir(self) -> Path:
        """The one local ingress of every model: its address, log-independent index and scrape targets."""
        return self.home / "serving"

    @property
    def prediction_log_dir(self) -> Path:
        return self.serving_dir / "prediction-log"

    @property
    def reports_dir(self) -> Path:
        return self._run_state / "reports"

    @property
    def io_manager_dir(self) -> Path:
        return self._run_state / "io"

    @property
    def feast_registry_url(self) -> str | None:
        """SQLAlchemy URL of the Feast SQL registry (database ``feast`` on the PostgreSQL server)."""
        if not self.postgres_url:
            return None
        return self.postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1).rstrip("/") + "/feast"

    def dataset_spec(self):
        """The model's dataset: from its spec, else the demo churn spec or the bring-your-own config
        named by MLOPS_DATASET_CONFIG."""
        if self.model is not None:
            return self.model.dataset
        from mlops_assets.data.load import load_spec
        from mlops_assets.data.spec import DEMO_SPEC

        return load_spec(self.dataset_config) if self.dataset_config else DEMO_SPEC

    def ensure_dirs(self) -> None:
        local_state = () if self.profile == "stack" else (self.mlflow_dir, self.feast_dir, self.reports_dir,
                                                          self.io_manager_dir)
        for path in (self.dagster_home, self.logs_dir, self.serving_dir, *local_state):
            path.mkdir(parents=True, exist_ok=True)

    def s3_client_env(self) -> dict[str, str]:
        """What libraries that read S3 settings from the environment need (MLflow's artifact store,
        boto3/s3fs through ``AWS_ENDPOINT_URL_S3``): the endpoint of an S3-compatible server, if set."""
        env = {name: self.extra[name] for name in LIBRARY_ENV if self.extra.get(name)}
        if self.s3_endpoint_url:
            env.update({"MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url, "AWS_ENDPOINT_URL_S3": self.s3_endpoint_url})
        return env

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
        if self.models_dir:
            env["MLOPS_MODELS_DIR"] = str(self.models_dir)
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
        if self.profile == "stack":
            env.update({name: value for name, value in self.stack_env().items() if value})
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
                    **({"MLOPS_MODELS_DIR": str(self.models_dir)} if self.models_dir else {}),
                    "MLOPS_SERVING_REPLICAS": str(self.serving_replicas),
                    "MLOPS_SERVING_HOLD_S": str(self.serving_hold_s),
                    **({"MLOPS_SERVING_STANDBY": str(self.serving_standby)} if self.serving_standby is not None else {}),
                    "MLOPS_SERVING_STANDBY_NICENESS": str(self.serving_standby_niceness),
                    "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        if self.dataset_config:
            env["MLOPS_DATASET_CONFIG"] = self.dataset_config
        if self.mlflow_tracking_uri_override:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri_override
        env.update(self.s3_client_env())
        if self.profile == "stack":
            env.update({name: value for name, value in self.stack_env().items() if value})
        return env

    def stack_env(self) -> dict[str, str]:
        """The stack profile's settings as environment variables (what a child process needs)."""
        return {"MLOPS_S3_BUCKET": self.s3_bucket or "", "MLOPS_S3_ENDPOINT_URL": self.s3_endpoint_url or "",
                "MLOPS_POSTGRES_URL": self.postgres_url or "", "MLOPS_REDIS": self.redis_connection,
                "MLOPS_DATA_GIT_URL": self.data_git_url or "", "MLOPS_SINK_URL": self.sink_url or "",
                "MLOPS_PUSHGATEWAY_URL": self.pushgateway_url or "",
                "MLOPS_SERVICE_TIMEOUT_S": str(self.service_timeout_s), **self.extra}


SYSTEM_VARIABLES = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                    "PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}


def _with_stack_file(env: Mapping[str, str]) -> Mapping[str, str]:
    path = Path(env.get("MLOPS_STACK_ENV") or STACK_ENV_FILE)
    if not path.exists():
        if env.get("MLOPS_STACK_ENV"):
            raise SettingsError(f"MLOPS_STACK_ENV={path} does not exist (python3 dev.py stack up writes it)")
        return env
    return {**read_env_file(path), **env}


def get_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment (or the mapping given, for tests). With
    ``MLOPS_MODELS_DIR``, the settings of the model ``MLOPS_MODEL_NAME`` (default: the first spec);
    :meth:`Settings.catalog` lists them all."""
    base = base_settings(env)
    if base.models_dir is None:
        return base
    from mlops_assets.catalog import ModelSpecError

    env = os.environ if env is None else env
    try:
        return base.for_model(base.catalog().get(env.get("MLOPS_MODEL_NAME") or None))
    except ModelSpecError as exc:
        raise SettingsError(str(exc)) from exc


def base_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings shared by every model (no model chosen yet)."""
    env = os.environ if env is None else env
    profile = env.get("MLOPS_PROFILE", "local").strip() or "local"
    if profile not in PROFILES:
        raise SettingsError(f"MLOPS_PROFILE={profile!r} is not one of {', '.join(PROFILES)}")
    if profile == "stack":
        env = _with_stack_file(env)
        missing = [f"{name} ({why})" for name, why in STACK_REQUIRED.items() if not env.get(name)]
        if missing:
            raise SettingsError("the stack profile needs these settings (run `python3 dev.py stack up`): "
                                + "; ".join(missing))
    deploy_mode = env.get("MLOPS_DEPLOY_MODE", "apply").strip() or "apply"
    if deploy_mode not in DEPLOY_MODES:
        raise SettingsError(f"MLOPS_DEPLOY_MODE={deploy_mode!r} is not one of {', '.join(DEPLOY_MODES)}")
    if profile == "k8s":
        required = {**K8S_REQUIRED, **(GITOPS_REQUIRED if deploy_mode == "gitops" else {})}
        missing = [f"{name} ({why})" for name, why in required.items() if not env.get(name)]
        if missing:
            raise SettingsError("the k8s profile needs these settings: " + "; ".join(missing))
    gitops_path = env.get("MLOPS_GITOPS_PATH")
    return Settings(
        profile=profile,
        home=Path(env.get("MLOPS_HOME") or str(PROJECT_ROOT / ".mlops")).expanduser().resolve(),
        model_name=env.get("MLOPS_MODEL_NAME", "churn"),
        mlflow_tracking_uri_override=env.get("MLFLOW_TRACKING_URI") or None,
        s3_bucket=env.get("MLOPS_S3_BUCKET") or None,
        s3_endpoint_url=env.get("MLOPS_S3_ENDPOINT_URL") or None,
        k8s_namespace=env.get("MLOPS_K8S_NAMESPACE", "mlops"),
        code_image=env.get("MLOPS_CODE_IMAGE") or None,
        serving_image=env.get("MLOPS_SERVING_IMAGE") or None,
        service_account=env.get("MLOPS_K8S_SERVICE_ACCOUNT", "mlops-deployer"),
        redis_connection=env.get("MLOPS_REDIS", "redis:6379"),
        dataset_config=env.get("MLOPS_DATASET_CONFIG") or None,
        drift_threshold=_number(env, "MLOPS_DRIFT_THRESHOLD", 0.3),
        retrain_cooldown_minutes=_number(env, "MLOPS_RETRAIN_COOLDOWN_MINUTES", 10.0),
        k8s_api_url=env.get("MLOPS_K8S_API") or None,
        kubeconfig=env.get("KUBECONFIG") or None,
        k8s_service_host=env.get("KUBERNETES_SERVICE_HOST") or None,
        k8s_service_port=env.get("KUBERNETES_SERVICE_PORT") or None,
        kube_context=env.get("MLOPS_KUBE_CONTEXT") or None,
        k8s_token_file=env.get("MLOPS_K8S_TOKEN_FILE") or IN_CLUSTER_TOKEN_FILE,
        k8s_ca_file=env.get("MLOPS_K8S_CA_FILE") or IN_CLUSTER_CA_FILE,
        deploy_mode=deploy_mode,
        gitops_path=Path(gitops_path).expanduser().resolve() if gitops_path else None,
        gitops_remote=env.get("MLOPS_GITOPS_REMOTE") or None,
        argocd_app=env.get("MLOPS_ARGOCD_APP") or None,
        argocd_namespace=env.get("MLOPS_ARGOCD_NAMESPACE") or "argocd",
        ready_timeout_s=_positive(env, "MLOPS_READY_TIMEOUT_S", 600.0),
        feature_ttl_days=_positive(env, "MLOPS_FEATURE_TTL_DAYS", 730.0, "days"),
        serving_replicas=_count(env, "MLOPS_SERVING_REPLICAS", 2),
        serving_hold_s=_positive(env, "MLOPS_SERVING_HOLD_S", 30.0),
        serving_standby=_count(env, "MLOPS_SERVING_STANDBY", 1, minimum=0) if env.get("MLOPS_SERVING_STANDBY") else None,
        serving_standby_niceness=_niceness(env, "MLOPS_SERVING_STANDBY_NICENESS", 10),
        postgres_url=env.get("MLOPS_POSTGRES_URL") or None,
        data_git_url=env.get("MLOPS_DATA_GIT_URL") or None,
        sink_url=(env.get("MLOPS_SINK_URL") or "").rstrip("/") or None,
        pushgateway_url=(env.get("MLOPS_PUSHGATEWAY_URL") or "").rstrip("/") or None,
        service_timeout_s=_positive(env, "MLOPS_SERVICE_TIMEOUT_S", 10.0),
        extra={name: env[name] for name in LIBRARY_ENV if env.get(name)},
        models_dir=Path(env["MLOPS_MODELS_DIR"]).expanduser().resolve() if env.get("MLOPS_MODELS_DIR") else None,
    )
