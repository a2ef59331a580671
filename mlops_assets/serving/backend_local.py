"""The `local` profile's serving backend: KServe model servers on 127.0.0.1 behind a canary ingress.

The ingress process (``python -m mlops_assets.serving --role ingress``) owns and supervises the
predictor and transformer processes and outlives the caller; this class starts it if needed and
drives it through its loopback admin API. ``serving_dir/state.json`` says what is serving, so a new
Dagster run or ``mlops status`` finds the same deployment. Safe to import in the Dagster process
(no kserve import).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mlops_assets.serving.revision import state_pids
from mlops_assets.serving.server import DEFAULT_MAX_REQUEST_BYTES
from mlops_assets.settings import Settings, get_settings

INGRESS_START_TIMEOUT_S = 60.0
ADMIN_TIMEOUT_S = 600.0


class ServingBackendError(RuntimeError):
    """A deployment step failed; the message carries the ingress's explanation."""


class LocalServingBackend:
    def __init__(self, settings: Settings | None = None, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.settings = settings or get_settings()
        self.max_request_bytes = max_request_bytes

    @property
    def state_path(self) -> Path:
        return self.settings.serving_dir / "state.json"

    @property
    def targets_path(self) -> Path:
        return self.settings.serving_dir / "prometheus_targets.json"

    @property
    def endpoint(self) -> str | None:
        """Base URL clients send requests to (``/v1/models/<name>:predict``), if serving."""
        state = self.status()
        return state["endpoint"] if state.get("running") else None

    # --- deployment --------------------------------------------------------------------------
    def start(self) -> dict:
        """Start the ingress if it is not running (serves 503 until a revision is deployed)."""
        self._admin_url()
        return self.status()

    def deploy(self, model_version: str | None = None) -> dict:
        """Serve ``model_version`` (default ``@champion``) as the stable revision at 100%."""
        return self._call("deploy", {"model_version": model_version, "as": "stable"})

    def deploy_canary(self, model_version: str | None, percent: int = 20, mode: str = "canary",
                      gate: dict | None = None) -> dict:
        """Serve ``model_version`` as the canary at ``percent``% (as stable if nothing serves yet);
        ``mode="shadow"``: it gets a copy of every request and answers none. ``gate``: the online A/B
        policy stored with the deployment for ``online_evaluation``."""
        return self._call("deploy", {"model_version": model_version, "percent": percent, "as": "canary",
                                     "mode": mode, "gate": gate})

    def set_canary_percent(self, percent: int) -> dict:
        return self._call("traffic", {"percent": percent})

    def promote(self) -> dict:
        """Canary to 100%; the old stable stops once its in-flight requests are done."""
        return self._call("promote")

    def rollback(self) -> dict:
        """Canary to 0%; it stops once its in-flight requests are done."""
        return self._call("rollback")

    # --- lifecycle ---------------------------------------------------------------------------
    def status(self) -> dict:
        """The live state from the ingress, or the last written state marked not running."""
        state = self._read_state()
        if state is None:
            return {"running": False, "model_name": self.settings.model_name, "revisions": {}}
        try:
            return httpx.get(f"{state['endpoint']}/admin/state", timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return {**state, "running": False}

    def stop(self) -> None:
        """Stop the ingress and every serving process (pids from the state file as a fallback)."""
        state = self._read_state()
        if state is None:
            return
        try:
            httpx.post(f"{state['endpoint']}/admin/stop", timeout=5.0)
            _wait_for_exit(state["ingress"]["pid"], timeout=30.0)
        except httpx.HTTPError:
            pass
        for pid in state_pids(state):
            _kill(pid)
        state["running"] = False
        self.state_path.write_text(json.dumps(state, indent=2))

    # --- internals ---------------------------------------------------------------------------
    def _call(self, action: str, params: dict | None = None) -> dict:
        url = self._admin_url()
        try:
            response = httpx.post(f"{url}/admin/{action}", json=params or {}, timeout=ADMIN_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise ServingBackendError(f"ingress at {url} did not answer {action}: {exc}") from exc
        if response.status_code != 200:
            raise ServingBackendError(f"{action} failed: {_error_text(response)}")
        return response.json()

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _admin_url(self) -> str:
        state = self._read_state()
        if state and _alive(state["ingress"]["pid"]) and _answers(state["endpoint"]):
            return state["endpoint"]
        if state:  # a dead ingress's children die with it; clear any left over
            for pid in state_pids(state):
                _kill(pid)
        port = _free_or_new_port(state["ingress"]["port"] if state else None)
        self._spawn_ingress(port)
        return f"http://127.0.0.1:{port}"

    def _spawn_ingress(self, port: int) -> None:
        log_dir = self.settings.logs_dir / "serving"
        log_dir.mkdir(parents=True, exist_ok=True)
        work_dir = self.settings.serving_dir / "run"
        work_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "ingress.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlops_assets.serving", "--role", "ingress", "--http_port", str(port),
                 "--model_name", self.settings.model_name, "--max_request_bytes", str(self.max_request_bytes)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.settings.serving_env(),  # nothing inherited from the caller (e.g. Feast's state)
                cwd=str(work_dir), start_new_session=True)  # outlives the caller (a Dagster run)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + INGRESS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServingBackendError(f"ingress exited with {process.returncode}; see {log_dir / 'ingress.log'}")
            if _answers(url):
                return
            time.sleep(0.1)
        raise ServingBackendError(f"ingress on port {port} did not start within {INGRESS_START_TIMEOUT_S:.0f} s")


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int) -> None:
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        try:  # reap it if it is our child (tests), so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)


def _free_or_new_port(preferred: int | None) -> int:
    """Keep the endpoint stable across restarts when the old port is still free."""
    import socket

    from mlops_assets.serving.revision import free_port

    if preferred:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    return free_port()


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:500]
