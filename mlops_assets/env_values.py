"""For mlops_assets.settings (the one module that reads the environment): which settings each profile
requires, and reading numbers, counts and ``NAME=value`` files; errors name the variable."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping


# Settings the k8s profile cannot run without; checked when the definitions load, not at first run.
K8S_REQUIRED = {
    "MLOPS_S3_BUCKET": "bucket for DVC data, MLflow artifacts, IO manager and Feast offline store",
    "MLFLOW_TRACKING_URI": "MLflow tracking server URI",
    "MLOPS_K8S_NAMESPACE": "namespace for Dagster jobs and the InferenceService",
    "MLOPS_CODE_IMAGE": "container image of this code location (Dagster code server, run and step pods)",
    "MLOPS_SERVING_IMAGE": "container image of the serving classes (predictor, transformer, prediction-log sink)",
}
# Added to the above in gitops deploy mode.
GITOPS_REQUIRED = {
    "MLOPS_GITOPS_PATH": "release file in a git checkout that Argo CD syncs (gitops mode)",
    "MLOPS_ARGOCD_APP": "the Argo CD Application that syncs MLOPS_GITOPS_PATH (gitops mode)",
}

# Settings the stack profile cannot run without (``python3 dev.py stack up`` writes them to
# .mlops-stack/stack.env, which mlops_assets.settings reads under the environment: the environment wins).
STACK_REQUIRED = {
    "MLOPS_S3_BUCKET": "bucket for DVC data, the IO manager, Feast offline, prediction log, reports",
    "MLOPS_S3_ENDPOINT_URL": "the S3 server's URL",
    "MLFLOW_TRACKING_URI": "MLflow tracking server URI (http://)",
    "MLOPS_POSTGRES_URL": "PostgreSQL server URL (Dagster storage, Feast registry)",
    "MLOPS_REDIS": "Redis host:port (Feast online store)",
    "MLOPS_DATA_GIT_URL": "git remote of the DVC data repository",
    "MLOPS_SINK_URL": "the prediction-log sink's URL",
    "MLOPS_PUSHGATEWAY_URL": "Prometheus Pushgateway URL (loop gauges)",
}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


SettingsError.__module__ = "mlops_assets.settings"  # its public home, as tracebacks show it


def number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def positive(env: Mapping[str, str], name: str, default: float, unit: str = "seconds") -> float:
    value = number(env, name, default)
    if not value > 0:
        raise SettingsError(f"{name}={env.get(name)!r} must be a number of {unit} greater than 0")
    return value


def count(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    value = number(env, name, default)
    if not (value >= minimum and float(value).is_integer()):
        raise SettingsError(f"{name}={env.get(name)!r} must be a whole number of at least {minimum}")
    return int(value)


def niceness(env: Mapping[str, str], name: str, default: int) -> int:
    value = count(env, name, default, minimum=0)
    if value > 19:
        raise SettingsError(f"{name}={env.get(name)!r} must be a niceness from 0 to 19")
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, blank lines ignored)."""
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values
