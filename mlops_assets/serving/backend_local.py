"""The `local` profile's serving backend: KServe model servers on 127.0.0.1 behind one ingress.

The ingress process (``python -m mlops_assets.serving --role ingress``) serves every model of the
code location, owns and supervises their predictor and transformer processes and outlives the caller;
this class starts it if needed (one per ``MLOPS_HOME``: ``MLOPS_HOME/serving/ingress.json`` says
where it is, a file lock keeps two launchers from starting two) and drives one model's deployment
through its loopback admin API. The model's ``serving_dir/state.json`` says what is serving, so a new
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

from mlops_assets.atomic import file_lock
from mlops_assets.serving.fleet import index_path, read_json, targets_path
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
        """Prometheus file-SD targets of the ingress and every model's replicas."""
        return targets_path(self.settings)

    @property
    def endpoint(self) -> str | None:
        """Base URL clients send requests to (``/v1/models/<name>:predict``), if serving."""
        state = self.status()
        return state["endpoint"] if state.get("running") else None

    # --- deployment --------------------------------------------------------------------------
    def start(self) -> dict:
        """Start the ingress if it is not running, and this model's route (503 until a revision is deployed)."""
        return self._call("start")

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
        """This model's live state from the ingress, or the last written state marked not running."""
        state, index = self._read_state(), self._read_index()
        if index is not None:
            try:
                response = httpx.get(f"{index['endpoint']}/admin/state", params={"model": self.settings.model_name},
                                     timeout=5.0)
                if response.status_code == 200:
                    return response.json()
            except (httpx.HTTPError, ValueError):
                pass
        if state is None:
            return {"running": False, "model_name": self.settings.model_name, "revisions": {}}
        return {**state, "running": False}

    def stop(self, every_model: bool = False) -> None:
        """Stop this model's serving processes (``every_model``: the ingress and every model's); the
        ingress stops once it serves no model. Pids from the state files as a fallback."""
        index = self._read_index()
        states = [self._read_state()]
        if every_model and index:
            states += [read_json(Path(folder) / "state.json") for folder in index.get("models", {}).values()]
        if index is not None and _alive(index.get("pid")):
            try:
                answer = httpx.post(f"{index['endpoint']}/admin/stop",
                                    json={} if every_model else {"model": self.settings.model_name}, timeout=60.0)
                if every_model or answer.json().get("ingress"):
                    _wait_for_exit(index["pid"], timeout=30.0)
            except (httpx.HTTPError, ValueError):
                pass
        for state in filter(None, states):
            for pid in state_pids(state):
                _kill(pid)
        if every_model and index is not None and index.get("running"):  # nothing to restore on the next start
            index["running"] = False
            index_path(self.settings).write_text(json.dumps(index, indent=2))
        state = states[0]
        if state is not None:
            state["running"] = False
            self.state_path.write_text(json.dumps(state, indent=2))

    # --- internals ---------------------------------------------------------------------------
    def _call(self, action: str, params: dict | None = None) -> dict:
        params = {**(params or {}), "model": self.settings.model_name}
        url = self._admin_url()
        try:
            try:
                response = httpx.post(f"{url}/admin/{action}", json=params, timeout=ADMIN_TIMEOUT_S)
            except httpx.ConnectError:  # the ingress was stopping (its last model stopped): start it again
                url = self._admin_url()
                response = httpx.post(f"{url}/admin/{action}", json=params, timeout=ADMIN_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise ServingBackendError(f"ingress at {url} did not answer {action}: {exc}") from exc
        if response.status_code != 200:
            raise ServingBackendError(f"{action} failed: {_error_text(response)}")
        return response.json()

    def _read_state(self) -> dict | None:
        return read_json(self.state_path)

    def _read_index(self) -> dict | None:
        return read_json(index_path(self.settings))

    def _admin_url(self) -> str:
        """The running ingress's address; started first if there is none (one launcher at a time)."""
        with file_lock(self.settings.ingress_dir / "ingress.lock"):
            index = self._read_index()
            if index and _alive(index.get("pid")):
                # a busy ingress is still the ingress: a second one would split the models between two
                if _answers(index["endpoint"], patience=INGRESS_START_TIMEOUT_S):
                    return index["endpoint"]
                _kill(index["pid"])  # alive but deaf for a minute: replaced
            if index:  # a dead ingress's children die with it; clear any left over
                for folder in index.get("models", {}).values():
                    for pid in state_pids(read_json(Path(folder) / "state.json") or {}):
                        _kill(pid)
            port = _free_or_new_port(index["port"] if index else None)
            self._spawn_ingress(port)
            return f"http://127.0.0.1:{port}"

    def _spawn_ingress(self, port: int) -> None:
        log_dir = self.settings.home / "logs" / "serving"
        log_dir.mkdir(parents=True, exist_ok=True)
        work_dir = self.settings.ingress_dir / "run"
        work_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "ingress.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlops_assets.serving", "--role", "ingress", "--http_port", str(port),
                 "--max_request_bytes", str(self.max_request_bytes)],
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


def _answers(url: str, patience: float = 0.0) -> bool:
    """Whether the ingress at ``url`` answers its health check (asking again for ``patience`` seconds)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, e.g. a killed ingress this process started, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
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
            # as uvicorn binds: the dead ingress's connections in TIME_WAIT do not make the port busy
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
