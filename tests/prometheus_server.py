"""Run a real Prometheus server for the local profile and read series back from it.

The committed config (``deploy/monitoring/prometheus/prometheus.local.yml``) is rendered for one
``MLOPS_HOME`` (file-SD path of the serving backend, absolute rule file), then a ``prometheus``
subprocess is started on a free 127.0.0.1 port with a throwaway storage directory.

Only the standard library and PyYAML are imported, so loading the code location stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from mlops_assets.atomic import atomic_write_text
from mlops_assets.settings import PROJECT_ROOT, Settings

PROMETHEUS_DEPLOY_DIR = PROJECT_ROOT / "deploy" / "monitoring" / "prometheus"
LOCAL_CONFIG = PROMETHEUS_DEPLOY_DIR / "prometheus.local.yml"
ALERT_RULES = PROMETHEUS_DEPLOY_DIR / "alerts.yml"
ALERT_RULE_TESTS = PROMETHEUS_DEPLOY_DIR / "alerts_test.yml"
SERVING_JOB = "mlops-serving"
INGRESS_JOB = "mlops-ingress"
APT_HINT = "install the Debian package that ships it: apt-get install -y prometheus"


class PrometheusNotFound(FileNotFoundError):
    """The prometheus or promtool binary is not installed; the message says how to get it."""


class PrometheusError(RuntimeError):
    """The server did not start, did not get ready, or answered a query with an error."""


# --- binaries ----------------------------------------------------------------------------------

def find_binary(name: str) -> Path:
    """Locate ``name`` on PATH, falling back to /usr/bin where the Debian package puts it."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if not found:
        raise PrometheusNotFound(f"`{name}` was not found on PATH or in /usr/bin; {APT_HINT}")
    return Path(found)


def find_prometheus() -> Path:
    return find_binary("prometheus")


def find_promtool() -> Path:
    return find_binary("promtool")


# --- config ------------------------------------------------------------------------------------

def targets_file(settings: Settings) -> Path:
    """The file-SD JSON the local serving backend keeps up to date with its live servers."""
    return settings.serving_dir / "prometheus_targets.json"


def write_targets_file(path: Path, targets: Iterable[str], labels: dict[str, str] | None = None) -> Path:
    """Write a one-group file-SD JSON atomically (Prometheus may read it at any moment)."""
    groups = [{"targets": list(targets), "labels": dict(labels or {})}]
    atomic_write_text(path, json.dumps(groups, indent=2))
    return path


def render_config(settings: Settings, *, interval: str | None = None,
                  ingress_target: str | None = None, alertmanager: str | None = None) -> dict[str, Any]:
    """The committed local config, made absolute for ``settings.home``.

    ``interval`` overrides scrape and evaluation intervals (tests use ``1s``). ``ingress_target``
    is the ingress ``host:port``; without it the static ingress job is dropped and the ingress is
    expected in the file-SD JSON. ``alertmanager`` (``host:port``) replaces the Alertmanager
    address; without it alerts are only evaluated, not sent.
    """
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["rule_files"] = [str(ALERT_RULES)]
    if interval:
        config["global"].update(scrape_interval=interval, scrape_timeout=interval,
                                evaluation_interval=interval)
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    jobs = [job for job in config["scrape_configs"] if _keep_job(job["job_name"], ingress_target)]
    config["scrape_configs"] = [_render_job(job, settings, ingress_target, interval) for job in jobs]
    return config


def _keep_job(name: str, ingress_target: str | None) -> bool:
    # The committed self-scrape names the default port, not the port this server will get.
    return name != "prometheus" and (name != INGRESS_JOB or bool(ingress_target))


def _render_job(job: dict[str, Any], settings: Settings, ingress_target: str | None,
                interval: str | None) -> dict[str, Any]:
    if job["job_name"] == SERVING_JOB:
        sd: dict[str, Any] = {"files": [str(targets_file(settings))]}
        if interval:
            sd["refresh_interval"] = interval
        job["file_sd_configs"] = [sd]
    elif job["job_name"] == INGRESS_JOB:
        job["static_configs"] = [{"targets": [ingress_target]}]
    return job


def write_runtime_config(settings: Settings, dest: Path | None = None, **render_options: Any) -> Path:
    """Write the rendered config (default ``MLOPS_HOME/prometheus/prometheus.yml``) and return its path."""
    dest = dest or settings.home / "prometheus" / "prometheus.yml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(render_config(settings, **render_options), sort_keys=False))
    return dest


# --- server ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrometheusServer:
    process: subprocess.Popen
    port: int
    storage_dir: Path
    log_path: Path
    owns_storage: bool = True
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        return query(self.url, promql, timeout=timeout)

    def wait_for_series(self, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        return wait_for_series(self.url, promql, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and remove storage it created."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._log_file:
            self._log_file.close()
        if self.owns_storage:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_prometheus(config_path: Path, *, port: int | None = None, storage_dir: Path | None = None,
                     ready_timeout: float = 30.0, attempts: int = 3) -> PrometheusServer:
    """Start ``prometheus`` on 127.0.0.1 and return once ``/-/ready`` answers.

    A free port can be taken by another process between choosing it and binding it, so a server
    that exits during start-up is retried on a new port (unless ``port`` was given).
    """
    binary = find_prometheus()
    last_error: PrometheusError | None = None
    for _ in range(attempts if port is None else 1):
        server = _spawn(binary, config_path, port or free_port(), storage_dir)
        try:
            wait_ready(server, ready_timeout)
            return server
        except PrometheusError as error:
            port_taken = "address already in use" in server.log_tail()
            server.stop()
            last_error = error
            if not port_taken:
                break
    raise last_error  # type: ignore[misc]


def _spawn(binary: Path, config_path: Path, port: int, storage_dir: Path | None) -> PrometheusServer:
    owns_storage = storage_dir is None
    storage = storage_dir or Path(tempfile.mkdtemp(prefix="mlops-prometheus-"))
    storage.mkdir(parents=True, exist_ok=True)
    log_path = storage / "prometheus.log"
    # Log to a file, not a pipe: nobody drains a pipe and a full one would stall the server.
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [str(binary), f"--config.file={config_path}", f"--storage.tsdb.path={storage / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=info"],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    return PrometheusServer(process, port, storage, log_path, owns_storage, log_file)


def wait_ready(server: PrometheusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PrometheusError(f"prometheus exited with code {server.process.returncode} during "
                                  f"start-up:\n{server.log_tail()}")
        if _get_status(f"{server.url}/-/ready") == 200:
            return
        time.sleep(0.2)
    raise PrometheusError(f"prometheus was not ready on {server.url} after {timeout:.0f}s:\n{server.log_tail()}")


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return None


# --- HTTP API ----------------------------------------------------------------------------------

def query(base_url: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Instant query through ``/api/v1/query``; returns the ``result`` list of the answer."""
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # 400/422 carry the PromQL error in the body
        body = json.loads(error.read() or b"{}")
    if body.get("status") != "success":
        raise PrometheusError(f"query {promql!r} failed: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def wait_for_series(base_url: str, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Poll ``promql`` until it returns at least one series (e.g. after the first scrape)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(base_url, promql)
        if result:
            return result
        if time.monotonic() > deadline:
            raise PrometheusError(f"no series for {promql!r} after {timeout:.0f}s")
        time.sleep(0.25)


def sample_value(series: dict[str, Any]) -> float:
    """The float value of one instant-vector series from :func:`query`."""
    return float(series["value"][1])


# --- promtool ----------------------------------------------------------------------------------

def promtool(*args: str, cwd: Path = PROMETHEUS_DEPLOY_DIR, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``promtool`` with ``args`` (e.g. ``"test", "rules", "alerts_test.yml"``)."""
    return subprocess.run([str(find_promtool()), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
