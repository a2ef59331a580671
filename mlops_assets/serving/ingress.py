"""The local ingress: one long-lived process (in its own session, so serving outlives the run that
deployed it) in front of every model of the code location. Requests are routed by the model their
path names (``/v1/models/<name>:predict``, ``/v2/models/<name>/infer``, ...) to that model's stable
and canary revisions; :class:`~mlops_assets.serving.fleet.Fleet` holds a
:class:`~mlops_assets.serving.controller.Controller` per model, the supervisor of its processes.
A path naming no model, or a model not deployed here, gets a 404 naming the models served.

- Traffic split like KServe's ``canaryTrafficPercent``. A V1 request whose first instance names an
  entity (``{"instances": [{"customer_id": 7, ...}]}``) is routed by a stable hash of that id, so a
  customer sees one revision (sticky, for the online A/B gate); other requests get a deterministic
  weighted round robin, so the canary gets exactly ``percent`` of every 100 of them. Weights change
  live; requests already sent to a revision finish there, and a revision is stopped only once its
  in-flight count is zero.
- Shadow mode: the client is answered by stable only; once that answer is sent, a copy of each
  ``:predict`` request goes to the challenger in the background, marked with the shadow header and
  the same request id (so labels join both). The challenger's errors or slowness never reach the
  client; at most ``SHADOW_MAX_INFLIGHT`` copies are in flight, further ones are dropped and counted.
- Within a revision, requests go round robin to its *ready* replicas. Inference is idempotent, so a
  request whose replica fails (connection refused or reset, or 503: its predictor is down) is retried
  on another ready replica of the same revision. While a revision has no ready replica, requests
  are held (like Knative's activator) for up to ``MLOPS_SERVING_HOLD_S`` seconds, then answered 503
  naming the revision.
- Every answer of the ingress itself is JSON, its own internal errors included.
- ``/admin/*`` (loopback only) changes a model's deployment (``{"model": "<name>", ...}``);
  ``/metrics`` adds every served model's loop gauges; ``/v2/health/ready`` says whether every served
  model has a ready replica; ``GET /v1/models`` lists the models.
- Each model's state goes to its ``serving_dir/state.json``; the ingress's index to
  ``MLOPS_HOME/serving/ingress.json`` and the scrape targets of all of them to ``prometheus_targets.json``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from urllib.parse import parse_qs

import orjson

from mlops_assets.serving.controller import Controller, ControllerError, Revision
from mlops_assets.serving.fleet import Fleet
from mlops_assets.serving.metrics import exposition, ingress_series
from mlops_assets.serving.routing import REVISION_HEADER, SHADOW_HEADER
from mlops_assets.serving.server import (
    ServingError,
    check_binary_header,
    read_body,
    send_json,
)
from mlops_assets.serving.upstream import Upstream, UpstreamError, UpstreamResponse

log = logging.getLogger("mlops.serving.ingress")

HOP_HEADERS = {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
               b"te", b"upgrade", b"proxy-connection", REVISION_HEADER.encode(), SHADOW_HEADER.encode()}
DROPPED_RESPONSE_HEADERS = {b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"}
HOLD_RECHECK_S = 0.25
SHADOW_MAX_INFLIGHT = 64

__all__ = ["IngressApp", "ControllerError", "run_ingress", "model_of"]


class IngressApp:
    """Raw ASGI app: proxy for inference paths, /metrics, /healthz and the /admin API."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self._counters: dict[tuple[str, str, int], object] = {}
        # The proxy hop's pool (aiohttp: a third of httpx's CPU per request, see serving/upstream.py);
        # the controllers keep their httpx clients for readiness probes.
        self.upstream = Upstream(timeout_s=60.0, connect_timeout_s=2.0)
        self._shadows: set[asyncio.Task] = set()
        self.shadow_dropped = 0
        self._restoring: asyncio.Task | None = None  # serving a crashed ingress's models again

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return None
        started = False

        async def send_noting_start(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._route(scope, receive, send_noting_start)
        except ServingError as exc:
            if not started:
                await send_json(send, exc.status, {"error": exc.message}, close=exc.status >= 500)
        except Exception as exc:  # never a plain-text 500: say what failed, as JSON
            log.exception("ingress internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_json(send, 500, {"error": f"ingress internal error ({type(exc).__name__}: {exc})"},
                                close=True)

    async def _route(self, scope, receive, send) -> None:
        path = scope["path"]
        if path.startswith("/admin/"):
            return await self._admin(scope, receive, send)
        if path == "/metrics":
            body = exposition(controller.settings for controller in self.fleet.controllers.values())
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        if path in ("/healthz", "/v2/health/live"):
            return await send_json(send, 200, {"status": "alive"})
        if path == "/v2/health/ready":
            ready, models = self.fleet.ready()
            return await send_json(send, 200 if ready else 503, {"ready": ready, "models": models})
        if path in ("/v1/models", "/v2/models"):
            return await send_json(send, 200, {"models": sorted(self.fleet.controllers)})
        name = model_of(path)
        if name is None:
            raise ServingError(f"no route for {path[:200]!r}: models are served under /v1/models/<name> and "
                               f"/v2/models/<name> (served: {', '.join(sorted(self.fleet.controllers)) or 'none'})",
                               status=404)
        return await self._proxy(self.fleet.get(name), scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                crashed = self.fleet.crashed_index()  # read before this ingress's index replaces it
                self.fleet.write_index()
                if crashed:
                    self._restoring = asyncio.get_running_loop().create_task(self.fleet.restore(crashed))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.fleet.stop_all()  # children stop before the process exits
                await self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, controller: Controller, scope, receive, send) -> None:
        body = await read_body(scope, receive, controller.max_request_bytes)
        check_binary_header(scope, body)
        router = controller.router
        revision = router.route(self._entity_of(controller.entity, scope, body) if router.split else None)
        if revision is None:
            raise ServingError(f"no revision of {controller.model_name} is serving", status=503)
        shadow = router.shadow() if scope["path"].endswith(":predict") else None
        url_path = scope["raw_path"].decode("latin-1") + (
            ("?" + scope["query_string"].decode("latin-1")) if scope["query_string"] else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP_HEADERS]
        if shadow is not None and not any(k == "x-request-id" for k, _ in headers):
            headers.append(("x-request-id", uuid.uuid4().hex))  # one id for both answers
        forwarded = headers
        headers = [*forwarded, (REVISION_HEADER, revision.name)]
        revision.inflight += 1
        try:
            response = await self._send_to_ready_replica(controller, revision, scope["method"], url_path, headers,
                                                         body)
        finally:
            revision.inflight -= 1
        self._count(controller.model_name, revision.name, response.status)
        out_headers = [(k, v) for k, v in response.raw_headers if k.lower() not in DROPPED_RESPONSE_HEADERS]
        out_headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": response.body})
        if shadow is not None and response.status == 200:
            self._send_shadow_copy(controller, shadow, scope["method"], url_path, forwarded, body)

    @staticmethod
    def _entity_of(entity: str, scope, body: bytes) -> int | None:
        """The entity id of a V1 request's first instance, if it names one (else None: round robin)."""
        if not scope["path"].endswith((":predict", ":explain")):
            return None
        try:
            instances = orjson.loads(body).get("instances")
            value = instances[0].get(entity)
        except (orjson.JSONDecodeError, AttributeError, TypeError, IndexError, KeyError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _send_shadow_copy(self, controller: Controller, revision: Revision, method: str, url_path: str,
                          headers: list, body: bytes) -> None:
        """Fire and forget: the challenger's answer is only logged (by its transformer)."""
        if len(self._shadows) >= SHADOW_MAX_INFLIGHT:
            self.shadow_dropped += 1
            return
        headers = [*headers, (REVISION_HEADER, revision.name), (SHADOW_HEADER, "1")]
        task = asyncio.get_running_loop().create_task(self._shadow(controller, revision, method, url_path,
                                                                   headers, body))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, controller: Controller, revision: Revision, method: str, url_path: str, headers: list,
                      body: bytes) -> None:
        model = controller.model_name
        revision.inflight += 1
        try:
            replicas = revision.ready_replicas()
            if not replicas:
                self._count(model, "shadow", 503)
                return
            response = await controller.client.request(
                method, replicas[0].transformer.url + url_path, content=body, headers=headers)
            self._count(model, "shadow", response.status_code)
        except Exception as exc:  # the challenger's failure is never the client's
            self._count(model, "shadow", 502)
            log.warning("shadow copy to %s failed: %s", revision.name, type(exc).__name__)
        finally:
            revision.inflight -= 1

    async def _send_to_ready_replica(self, controller: Controller, revision: Revision, method: str, url_path: str,
                                     headers: list, body: bytes) -> UpstreamResponse:
        """Try the revision's ready replicas in turn; hold while none is ready, up to the hold time."""
        deadline = time.monotonic() + controller.hold_s
        failed: set[int] = set()
        last_problem = "no ready replica"
        while True:
            candidates = [r for r in revision.ready_replicas() if id(r) not in failed]
            for replica in candidates:
                try:
                    response = await self.upstream.request(method, replica.transformer.url + url_path, body,
                                                           headers)
                except UpstreamError as exc:
                    last_problem = f"replica {replica.index}: {exc.kind}"
                    failed.add(id(replica))
                    continue
                if response.status == 503:
                    last_problem = f"replica {replica.index}: {response.error_text()}"
                    failed.add(id(replica))
                    continue
                return response
            if time.monotonic() >= deadline:
                self._count(controller.model_name, revision.name, 503)
                raise ServingError(f"{controller.model_name} revision {revision.name} (model version "
                                   f"{revision.model_version}) has no ready replica after waiting "
                                   f"{controller.hold_s:g} s ({last_problem})", status=503)
            # Held (like Knative's activator) until a replica turns ready, re-checking now and then.
            await controller.wait_for_readiness_change(min(HOLD_RECHECK_S, deadline - time.monotonic()))
            failed.clear()

    def _count(self, model: str, revision: str, code: int) -> None:
        key = (model, revision, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = ingress_series()[0].labels(model, revision, str(code))
        counter.inc()

    async def _admin(self, scope, receive, send) -> None:
        body = await read_body(scope, receive, 64 * 1024)
        try:
            params = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise ServingError("admin body must be JSON", 400) from None
        if not isinstance(params, dict):
            raise ServingError("admin body must be a JSON object", 400)
        action, fleet = scope["path"].removeprefix("/admin/"), self.fleet
        model = params.get("model") or parse_qs(scope["query_string"].decode("latin-1")).get("model", [None])[0]
        if scope["method"] == "GET" and action == "state":
            if model:
                return await send_json(send, 200, fleet.get(model).state())
            return await send_json(send, 200, {**fleet.index(), "states": {
                name: controller.state() for name, controller in fleet.controllers.items()}})
        if scope["method"] != "POST":
            raise ServingError(f"unknown admin call {scope['method']} {scope['path']}", 404)
        if action == "stop":  # one model's serving; the ingress itself once it serves no model
            if model:
                await fleet.close(model)
            if model and fleet.controllers:
                return await send_json(send, 200, {"stopping": model, "ingress": False})
            await send_json(send, 200, {"stopping": model, "ingress": True})
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; lifespan stops the children
            return
        if action not in ("start", "deploy", "traffic", "promote", "rollback"):
            raise ServingError(f"unknown admin call {action!r}", 404)
        if not isinstance(model, str) or not model:
            raise ServingError(f"admin {action} needs the model: {{\"model\": \"<name>\"}}", 400)
        if action == "deploy":  # checked before anything starts for the model
            mode, gate, percent = params.get("mode", "canary"), params.get("gate"), _percent(params.get("percent", 20))
            if mode not in ("canary", "shadow"):
                raise ServingError(f"mode must be 'canary' or 'shadow', got {mode!r}", 400)
            if gate is not None and not isinstance(gate, dict):
                raise ServingError("gate must be a JSON object (the A/B policy)", 400)
        controller = await fleet.open(model) if action in ("start", "deploy") else fleet.get(model)
        if action == "start":
            result = controller.state()
        elif action == "deploy":
            result = await controller.deploy(params.get("model_version"), percent,
                                             as_canary=params.get("as", "canary") == "canary", mode=mode, gate=gate)
        elif action == "traffic":
            result = await controller.set_traffic(_percent(params.get("percent")))
        elif action == "promote":
            result = await controller.promote()
        else:
            result = await controller.rollback()
        await send_json(send, 200, result)


def model_of(path: str) -> str | None:
    """The model a KServe path names: ``/v1/models/<name>[:verb]``, ``/v2/models/<name>[/...]``."""
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[0].split(":", 1)[0]
            return name or None
    return None


def _percent(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ServingError(f"percent must be an integer from 0 to 100, got {value!r}", 400)
    return value


def run_ingress(args) -> None:
    import uvicorn

    from mlops_assets.serving.protocol import GuardedHttpToolsProtocol
    from mlops_assets.serving.server import configure_logging, freeze_startup_heap

    configure_logging()
    app = IngressApp(Fleet(args.http_port, args.max_request_bytes))
    config = uvicorn.Config(app, host=args.host, port=args.http_port, log_config=None, access_log=False,
                            loop="uvloop", http=GuardedHttpToolsProtocol, lifespan="on", timeout_keep_alive=65,
                            timeout_graceful_shutdown=20)
    log.info("ingress for every model on http://%s:%d", args.host, args.http_port)
    freeze_startup_heap()
    uvicorn.Server(config).run()
