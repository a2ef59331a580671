"""The local ingress: a weighted proxy in front of a stable and a canary transformer, and the
supervisor of the serving processes behind it (one long-lived process, so serving outlives the
Dagster run that deployed it).

- Traffic split like KServe's ``canaryTrafficPercent``: a deterministic weighted round robin, so the
  canary gets exactly ``percent`` of every 100 requests. Weights change live; requests already sent
  to a revision finish there, and a revision is stopped only once its in-flight count is zero.
- A request whose revision cannot answer (connection refused, or 503: its predictor is down) is
  retried once on the other revision.
- Crashed processes are restarted on the same port; a canary that keeps crashing is rolled back.
- ``/admin/*`` (loopback only) changes the deployment; ``/metrics`` adds the loop gauges textfile.
- State goes to ``serving_dir/state.json`` and the scrape targets to ``prometheus_targets.json``.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import orjson

from mlops_assets.atomic import atomic_write_text
from mlops_assets.serving.metrics import exposition, ingress_series
from mlops_assets.serving.server import (
    REVISION_HEADER,
    ServingError,
    read_body,
    send_json,
)
from mlops_assets.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger("mlops.serving.ingress")

READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 30.0
CRASHES_BEFORE_ROLLBACK = 3
CRASH_WINDOW_S = 60.0
HOP_HEADERS = {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
               b"te", b"upgrade", b"proxy-connection", REVISION_HEADER.encode()}
DROPPED_RESPONSE_HEADERS = {"content-length", "connection", "keep-alive", "transfer-encoding", "date", "server"}


class ControllerError(ServingError):
    status = 409


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_json_atomically(path: Path, content) -> None:
    atomic_write_text(path, json.dumps(content, indent=2))


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the ingress dies, so nothing is orphaned."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One supervised server process; restarted on the same port when it dies unasked."""

    role: str
    port: int
    argv: list[str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    crashes: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Revision:
    """A predictor + transformer pair serving one model version; ``name`` is its traffic slot."""

    name: str
    model_version: str | None
    predictor: Child
    transformer: Child
    started_at: str
    inflight: int = 0

    @property
    def children(self) -> tuple[Child, Child]:
        return self.predictor, self.transformer


class Router:
    """Weighted round robin between stable and canary; answers the order of revisions to try."""

    def __init__(self):
        self.stable: Revision | None = None
        self.canary: Revision | None = None
        self.canary_percent = 0
        self._credit = 0

    def set(self, stable: Revision | None, canary: Revision | None, percent: int) -> None:
        self.stable, self.canary = stable, canary
        self.canary_percent = percent if canary is not None else 0
        if stable is not None and stable.name != "stable":
            stable.name = "stable"
        ingress_series()[1].set(self.canary_percent)

    def route(self) -> list[Revision]:
        stable, canary = self.stable, self.canary
        if canary is None or self.canary_percent <= 0:
            return [r for r in (stable, canary) if r is not None]
        if stable is None or self.canary_percent >= 100:
            return [r for r in (canary, stable) if r is not None]
        self._credit += self.canary_percent
        if self._credit >= 100:
            self._credit -= 100
            return [canary, stable]
        return [stable, canary]


class Controller:
    """Starts, stops and supervises the revisions; every change goes through one lock."""

    def __init__(self, settings: Settings, model_name: str, port: int, max_request_bytes: int):
        self.settings = settings
        self.model_name = model_name
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.router = Router()
        self.lock = asyncio.Lock()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0),
                                        limits=httpx.Limits(max_connections=200, max_keepalive_connections=64))
        self.log_dir = settings.logs_dir / "serving"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = _now()

    # --- deployment changes ------------------------------------------------------------------
    async def deploy(self, model_version: str | None, percent: int, as_canary: bool) -> dict:
        async with self.lock:
            router = self.router
            if as_canary and router.stable is not None:
                new = await self._start_revision("canary", model_version)
                old_canary = router.canary
                router.set(router.stable, new, percent)
                await self._retire(old_canary)
            else:
                new = await self._start_revision("stable", model_version)
                old = [router.stable, router.canary]
                router.set(new, None, 0)
                for revision in old:
                    await self._retire(revision)
            self.write_state()
            return self.state()

    async def set_traffic(self, percent: int) -> dict:
        async with self.lock:
            if self.router.canary is None:
                raise ControllerError("there is no canary to send traffic to")
            self.router.set(self.router.stable, self.router.canary, percent)
            self.write_state()
            return self.state()

    async def promote(self) -> dict:
        """The canary takes all traffic and becomes the stable revision; the old stable stops."""
        async with self.lock:
            old, canary = self.router.stable, self.router.canary
            if canary is None:
                raise ControllerError("there is no canary to promote")
            self.router.set(canary, None, 0)
            await self._retire(old)
            self.write_state()
            return self.state()

    async def rollback(self) -> dict:
        async with self.lock:
            canary = self.router.canary
            if canary is None:
                raise ControllerError("there is no canary to roll back")
            self.router.set(self.router.stable, None, 0)
            await self._retire(canary)
            self.write_state()
            return self.state()

    async def stop_all(self) -> None:
        async with self.lock:
            revisions = [self.router.stable, self.router.canary]
            self.router.set(None, None, 0)
            for revision in revisions:
                await self._retire(revision, drain=False)
            self.write_state(running=False)
        await self.client.aclose()

    # --- processes ---------------------------------------------------------------------------
    async def _start_revision(self, name: str, model_version: str | None) -> Revision:
        predictor_port, transformer_port = free_port(), free_port()
        common = [sys.executable, "-m", "mlops_assets.serving", "--model_name", self.model_name,
                  "--revision", name, "--max_request_bytes", str(self.max_request_bytes)]
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        predictor = Child("predictor", predictor_port,
                          common + ["--role", "predictor", "--http_port", str(predictor_port)]
                          + (["--model_version", str(model_version)] if model_version else []),
                          self.log_dir / f"{stamp}-{name}-predictor-{predictor_port}.log")
        transformer = Child("transformer", transformer_port,
                            common + ["--role", "transformer", "--http_port", str(transformer_port),
                                      "--predictor_host", f"127.0.0.1:{predictor_port}"],
                            self.log_dir / f"{stamp}-{name}-transformer-{transformer_port}.log")
        revision = Revision(name, model_version, predictor, transformer, _now())
        try:
            await asyncio.gather(*(self._spawn(child) for child in revision.children))
            ready = await asyncio.gather(*(self._wait_ready(child) for child in revision.children))
        except BaseException:
            await self._retire(revision, drain=False)
            raise
        revision.model_version = str(ready[0].get("model_version") or model_version)
        for child in revision.children:
            asyncio.get_running_loop().create_task(self._supervise(revision, child))
        log.info("revision %s (model version %s) ready: predictor :%d, transformer :%d", name,
                 revision.model_version, predictor_port, transformer_port)
        return revision

    async def _spawn(self, child: Child) -> None:
        env = self.settings.env_for_subprocess()
        env["OMP_NUM_THREADS"] = "1"
        with open(child.log_path, "ab") as out:
            child.process = await asyncio.create_subprocess_exec(
                *child.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=env, cwd=str(PROJECT_ROOT), preexec_fn=_die_with_parent)

    async def _wait_ready(self, child: Child, timeout: float = READY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise ControllerError(f"{child.role} exited with code {child.process.returncode} before it was "
                                      f"ready: {_tail(child.log_path)}")
            try:
                response = await self.client.get(f"{child.url}/v2/health/ready", timeout=2.0)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise ControllerError(f"{child.role} on port {child.port} not ready after {timeout:.0f} s: "
                              f"{_tail(child.log_path)}")

    async def _supervise(self, revision: Revision, child: Child) -> None:
        """Restart ``child`` whenever it dies unasked; roll a crash-looping canary back."""
        while True:
            code = await child.process.wait()
            if child.stopping:
                return
            now = time.monotonic()
            child.crashes = [t for t in child.crashes if now - t < CRASH_WINDOW_S] + [now]
            log.warning("%s %s (pid %d) exited with %s; restarting", revision.name, child.role,
                        child.process.pid, code)
            if revision.name == "canary" and len(child.crashes) >= CRASHES_BEFORE_ROLLBACK:
                log.error("canary %s crashed %d times in %.0f s: rolling back", child.role,
                          len(child.crashes), CRASH_WINDOW_S)
                asyncio.get_running_loop().create_task(self._rollback_quietly())
                return
            await asyncio.sleep(min(0.2 * 2 ** (len(child.crashes) - 1), 5.0))
            if child.stopping:
                return
            await self._spawn(child)
            try:
                await self._wait_ready(child)
            except ControllerError as exc:
                log.error("restart of %s %s failed: %s", revision.name, child.role, exc)
            self.write_state()

    async def _rollback_quietly(self) -> None:
        try:
            await self.rollback()
        except ControllerError:
            pass

    async def _retire(self, revision: Revision | None, drain: bool = True) -> None:
        """Stop a revision no longer routed to, once the requests it is serving have finished."""
        if revision is None:
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while drain and revision.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for child in revision.children:
            child.stopping = True
        await asyncio.gather(*(_terminate(child) for child in revision.children))

    # --- state -------------------------------------------------------------------------------
    def state(self, running: bool = True) -> dict:
        def describe(revision: Revision | None) -> dict | None:
            if revision is None:
                return None
            return {"model_version": revision.model_version, "started_at": revision.started_at,
                    **{child.role: {"port": child.port, "pid": child.process.pid if child.process else None,
                                    "url": child.url, "restarts": len(child.crashes)}
                       for child in revision.children}}

        return {"running": running, "model_name": self.model_name,
                "endpoint": f"http://127.0.0.1:{self.port}",
                "ingress": {"pid": os.getpid(), "port": self.port, "started_at": self.started_at},
                "canary_percent": self.router.canary_percent,
                "revisions": {"stable": describe(self.router.stable), "canary": describe(self.router.canary)},
                "updated_at": _now()}

    def write_state(self, running: bool = True) -> None:
        state = self.state(running)
        write_json_atomically(self.settings.serving_dir / "state.json", state)
        write_json_atomically(self.settings.serving_dir / "prometheus_targets.json",
                              scrape_targets(state) if running else [])


def scrape_targets(state: dict) -> list[dict]:
    """Prometheus file-SD groups: the ingress and each revision's predictor and transformer."""
    model = state["model_name"]
    groups = [{"targets": [f"127.0.0.1:{state['ingress']['port']}"],
               "labels": {"role": "ingress", "model_name": model}}]
    for name, revision in state["revisions"].items():
        for role in ("predictor", "transformer"):
            if revision is not None:
                groups.append({"targets": [f"127.0.0.1:{revision[role]['port']}"],
                               "labels": {"revision": name, "role": role, "model_name": model,
                                          "model_version": str(revision["model_version"])}})
    return groups


async def _terminate(child: Child, grace: float = 15.0) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    process.terminate()  # uvicorn finishes in-flight requests on SIGTERM
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class IngressApp:
    """Raw ASGI app: proxy for inference paths, /metrics, /healthz and the /admin API."""

    def __init__(self, controller: Controller, loop_metrics_path: Path):
        self.controller = controller
        self.loop_metrics_path = loop_metrics_path
        self._counters: dict[tuple[str, int], object] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        path = scope["path"]
        try:
            if path.startswith("/admin/"):
                return await self._admin(scope, receive, send)
            if path == "/metrics":
                body = exposition(self.loop_metrics_path)
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/plain; version=0.0.4")]})
                return await send({"type": "http.response.body", "body": body})
            if path == "/healthz":
                return await send_json(send, 200, {"status": "alive"})
            return await self._proxy(scope, receive, send)
        except ServingError as exc:
            return await send_json(send, exc.status, {"error": exc.message})

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.controller.stop_all()  # children stop before the process exits
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope, receive, send) -> None:
        body = await read_body(scope, receive, self.controller.max_request_bytes)
        targets = self.controller.router.route()
        if not targets:
            raise ServingError("no revision is serving", status=503)
        url_path = scope["raw_path"].decode() + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_HEADERS]
        for attempt, revision in enumerate(targets):
            last = attempt == len(targets) - 1
            revision.inflight += 1
            try:
                response = await self.controller.client.request(
                    scope["method"], revision.transformer.url + url_path, content=body,
                    headers=headers + [(REVISION_HEADER.encode(), revision.name.encode())])
            except httpx.TransportError as exc:
                if last:
                    self._count(revision.name, 503)
                    raise ServingError(f"revision {revision.name} unreachable: {type(exc).__name__}", 503)
                continue
            finally:
                revision.inflight -= 1
            if response.status_code == 503 and not last:
                continue
            self._count(revision.name, response.status_code)
            out_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()
                           if k not in DROPPED_RESPONSE_HEADERS]
            out_headers.append((b"content-length", str(len(response.content)).encode()))
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            return await send({"type": "http.response.body", "body": response.content})

    def _count(self, revision: str, code: int) -> None:
        key = (revision, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = ingress_series()[0].labels(revision, str(code))
        counter.inc()

    async def _admin(self, scope, receive, send) -> None:
        body = await read_body(scope, receive, 64 * 1024)
        try:
            params = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise ServingError("admin body must be JSON", 400) from None
        controller, action = self.controller, scope["path"].removeprefix("/admin/")
        if scope["method"] == "GET" and action == "state":
            return await send_json(send, 200, controller.state())
        if scope["method"] != "POST":
            raise ServingError(f"unknown admin call {scope['method']} {scope['path']}", 404)
        if action == "deploy":
            result = await controller.deploy(params.get("model_version"), _percent(params.get("percent", 20)),
                                             as_canary=params.get("as", "canary") == "canary")
        elif action == "traffic":
            result = await controller.set_traffic(_percent(params.get("percent")))
        elif action == "promote":
            result = await controller.promote()
        elif action == "rollback":
            result = await controller.rollback()
        elif action == "stop":
            await send_json(send, 200, {"stopping": True})
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; lifespan stops the children
            return
        else:
            raise ServingError(f"unknown admin call {action!r}", 404)
        await send_json(send, 200, result)


def _percent(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ServingError(f"percent must be an integer from 0 to 100, got {value!r}", 400)
    return value


def run_ingress(args) -> None:
    import uvicorn

    from mlops_assets.serving.server import configure_logging

    configure_logging()
    settings = get_settings()
    controller = Controller(settings, args.model_name, args.http_port, args.max_request_bytes)
    app = IngressApp(controller, settings.home / "metrics" / "loop.prom")
    controller.write_state()
    config = uvicorn.Config(app, host=args.host, port=args.http_port, log_config=None, access_log=False,
                            loop="uvloop", http="httptools", lifespan="on", timeout_keep_alive=65,
                            timeout_graceful_shutdown=20)
    log.info("ingress for %s on http://%s:%d", args.model_name, args.host, args.http_port)
    uvicorn.Server(config).run()
