"""Every model the one local ingress serves: a :class:`Controller` per model, made when the model is
first deployed (or started), each with its own revisions, replicas, warm standby pool and state file
(``<model's serving_dir>/state.json``).

The ingress's own index, ``MLOPS_HOME/serving/ingress.json`` (pid, port, the models it serves and
where their state is), tells a launcher where the ingress is; ``MLOPS_HOME/serving/prometheus_targets.json``
lists the ingress once and every model's replicas, for Prometheus's file-based discovery.
An ingress started after one that died (``kill -9``, a reboot) serves again, in the background, the
stable revision of every model the dead one served. A model is known by the catalog
(``MLOPS_MODELS_DIR``, read again for a name not seen yet, so a spec added after the ingress started
can be served without restarting it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from mlops_assets.serving.controller import Controller, write_json_atomically
from mlops_assets.serving.revision import scrape_targets
from mlops_assets.serving.validation import ServingError
from mlops_assets.settings import Settings, base_settings


log = logging.getLogger("mlops.serving.fleet")


class UnknownModel(ServingError):
    status = 404


def index_path(settings: Settings) -> Path:
    return settings.ingress_dir / "ingress.json"


def targets_path(settings: Settings) -> Path:
    return settings.ingress_dir / "prometheus_targets.json"


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path`` (an index or state file), or None if it is missing or unreadable."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def model_settings(base: Settings, name: str) -> Settings:
    """The settings of model ``name`` from the catalog (``base``: the settings no model was chosen for)."""
    from mlops_assets.catalog import ModelSpecError

    if base.models_dir is None and name == base.model_name:
        return base  # the built-in model, exactly as `get_settings()` resolves it
    try:
        return base.for_model(base.catalog().get(name))
    except ModelSpecError as exc:
        raise UnknownModel(f"model {name!r} is not in this code location's catalog: {exc}") from exc


class Fleet:
    def __init__(self, port: int, max_request_bytes: int, base: Settings | None = None):
        self.base = base or base_settings()
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.controllers: dict[str, Controller] = {}
        self._opening = asyncio.Lock()
        self.started_at = datetime.now(timezone.utc).isoformat()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, name: str) -> Controller:
        controller = self.controllers.get(name)
        if controller is None:
            served = ", ".join(sorted(self.controllers)) or "none yet"
            raise UnknownModel(f"model {name!r} is not served here (served: {served}); a deployment of it "
                               "starts its route")
        return controller

    async def open(self, name: str) -> Controller:
        """The model's controller, made (and its warm pool started) on first use. The catalog is read
        in a thread: the ingress keeps answering the other models meanwhile."""
        async with self._opening:
            controller = self.controllers.get(name)
            if controller is None:
                settings = await asyncio.to_thread(model_settings, self.base, name)
                controller = await asyncio.to_thread(Controller, settings, name, self.port, self.max_request_bytes,
                                                     self.write_index)
                self.controllers[name] = controller
                controller.start_standby()
                controller.write_state()
            return controller

    def crashed_index(self) -> dict | None:
        """The index of an ingress before this one that did not stop cleanly (killed, machine restarted)."""
        index = read_json(index_path(self.base))
        return index if index and index.get("running") and index.get("models") else None

    async def restore(self, crashed: dict) -> dict[str, str]:
        """Serve again the stable revision each model of a crashed ingress was serving (its state file
        says which version); a canary is not restored (its rollout ended with the crash). Returns
        ``{model: version or the error}``."""
        restored = {}
        for name, folder in sorted(crashed.get("models", {}).items()):
            state = read_json(Path(folder) / "state.json") or {}
            try:
                version = str(state["revisions"]["stable"]["model_version"])
            except (KeyError, TypeError):
                continue  # nothing was serving for it
            if not state.get("running"):
                continue  # stopped on purpose while the ingress was down
            try:
                await (await self.open(name)).deploy(version, 0, as_canary=False)
                restored[name] = version
                log.warning("restored %s v%s after the previous ingress (pid %s) died", name, version,
                            crashed.get("pid"))
            except Exception as exc:  # one model's failure leaves the others restored
                restored[name] = f"failed: {exc}"
                log.error("cannot restore %s v%s: %s", name, version, exc)
        return restored

    async def close(self, name: str) -> None:
        """Stop one model's revisions and standby processes; the others keep serving."""
        controller = self.get(name)
        try:
            await controller.stop_all()
        finally:
            self.controllers.pop(name, None)
            self.write_index()

    async def stop_all(self) -> None:
        """The ingress is shutting down: every model stops, the index says so."""
        for name in list(self.controllers):
            await self.close(name)
        self.write_index(running=False)

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Ready when a model is served and every served model's routed revision has a ready replica."""
        models = {}
        for name, controller in self.controllers.items():
            revision = controller.router.stable or controller.router.canary  # read only: routing is untouched
            models[name] = revision is not None and any(replica.ready for replica in revision.replicas)
        return bool(models) and all(models.values()), models

    def index(self) -> dict:
        return {"pid": os.getpid(), "port": self.port, "endpoint": self.endpoint, "started_at": self.started_at,
                "models": {name: str(controller.settings.serving_dir)
                           for name, controller in sorted(self.controllers.items())}}

    def write_index(self, running: bool = True) -> None:
        write_json_atomically(index_path(self.base), {**self.index(), "running": running})
        states = [controller.state() for controller in self.controllers.values()]
        write_json_atomically(targets_path(self.base), scrape_targets(self.port, states) if running else [])
