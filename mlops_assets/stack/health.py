"""Is every shared service of the `stack` profile answering? Checked when a run starts (the
``settings`` resource of the stack profile), so a run fails at once, before any step, naming each
service that is down and its URL, instead of somewhere deep in a step after minutes of retries.
Each probe is bounded by ``MLOPS_SERVICE_TIMEOUT_S``; the probes run in parallel.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import urlparse

from mlops_assets.settings import Settings


class ServiceUnavailable(RuntimeError):
    """One or more services are down; the message names each with its URL."""


def _postgres(settings: Settings, timeout: float) -> None:
    import psycopg2

    psycopg2.connect(settings.postgres_url.rstrip("/") + "/dagster", connect_timeout=max(1, int(timeout))).close()


def _redis(settings: Settings, timeout: float) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host, _, port = settings.redis_connection.partition(":")
    redis.Redis(host=host, port=int(port or 6379), socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0)).ping()  # one attempt: the timeout is the budget


def _s3(settings: Settings, timeout: float) -> None:
    from mlops_assets.monitoring.object_log import ObjectLog

    store = ObjectLog.from_settings(settings)
    store.timeout_s = timeout
    ok, reason = store.reachable()
    if not ok:
        raise RuntimeError(reason)


def _http(path: str, attribute: str) -> Callable[[Settings, float], None]:
    def probe(settings: Settings, timeout: float) -> None:
        import httpx

        httpx.get(getattr(settings, attribute).rstrip("/") + path, timeout=timeout).raise_for_status()

    return probe


def _git(settings: Settings, timeout: float) -> None:
    result = subprocess.run(["git", "ls-remote", "--heads", settings.data_git_url], capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip()[-300:])


PROBES: dict[str, tuple[str, Callable[[Settings, float], None]]] = {
    "PostgreSQL": ("postgres_url", _postgres),
    "Redis": ("redis_connection", _redis),
    "S3": ("s3_endpoint_url", _s3),
    "MLflow tracking server": ("mlflow_tracking_uri", _http("/health", "mlflow_tracking_uri")),
    "prediction-log sink": ("sink_url", _http("/healthz", "sink_url")),
    "Pushgateway": ("pushgateway_url", _http("/-/ready", "pushgateway_url")),
    "git server (DVC metadata)": ("data_git_url", _git),
}


def _redact(url: str) -> str:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    if parsed.password:
        url = url.replace(f":{parsed.password}@", ":***@")
    return url


def down_services(settings: Settings) -> list[str]:
    """``"<service> at <url>: <error>"`` for every service that does not answer in time."""
    timeout = settings.service_timeout_s

    def check(item):
        name, (attribute, probe) = item
        url = str(getattr(settings, attribute))
        try:
            probe(settings, timeout)
            return None
        except Exception as exc:  # each client raises its own types; all mean "not answering"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"{name} at {_redact(url)}: {first[:200]}"

    with ThreadPoolExecutor(len(PROBES)) as pool:
        return [problem for problem in pool.map(check, PROBES.items()) if problem]


def require_services(settings: Settings) -> None:
    problems = down_services(settings)
    if problems:
        raise ServiceUnavailable(f"{len(problems)} service(s) down (timeout {settings.service_timeout_s:g} s): "
                                 + "; ".join(problems))
