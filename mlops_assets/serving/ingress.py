"""The local ingress: a weighted proxy in front of the stable and canary revisions, and (through
:class:`~mlops_assets.serving.controller.Controller`) the supervisor of the serving processes behind
it: one long-lived process in its own session, so serving outlives the run that deployed it.

- Traffic split like KServe's ``canaryTrafficPercent``: a deterministic weighted round robin, so the
  canary gets exactly ``percent`` of every 100 requests. Weights change live; requests already sent
  to a revision finish there, and a revision is stopped only once its in-flight count is zero.
- Within a revision, requests go round robin to its *ready* replicas. Inference is idempotent, so a
  request whose replica fails (connection refused or reset, or 503: its predictor is down) is retried
  on another ready replica of the same revision. While a revision has no ready replica, requests
  are held (like Knative's activator) for up to ``MLOPS_SERVING_HOLD_S`` seconds, then answered 503
  naming the revision.
- Every answer of the ingress itself is JSON, its own internal errors included.
- ``/admin/*`` (loopback only) changes the deployment; ``/metrics`` adds the loop gauges textfile.
- State goes to ``serving_dir/state.json`` and the scrape targets to ``prometheus_targets.json``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import httpx
import orjson

from mlops_assets.serving.controller import Controller, ControllerError, Revision
from mlops_assets.serving.metrics import exposition, ingress_series
from mlops_assets.serving.routing import REVISION_HEADER
from mlops_assets.serving.server import (
    ServingError,
    check_binary_header,
    read_body,
    send_json,
)
from mlops_assets.settings import get_settings

log = logging.getLogger("mlops.serving.ingress")

HOP_HEADERS = {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
               b"te", b"upgrade", b"proxy-connection", REVISION_HEADER.encode()}
DROPPED_RESPONSE_HEADERS = {"content-length", "connection", "keep-alive", "transfer-encoding", "date", "server"}
HOLD_RECHECK_S = 0.25

__all__ = ["IngressApp", "ControllerError", "run_ingress"]


class IngressApp:
    """Raw ASGI app: proxy for inference paths, /metrics, /healthz and the /admin API."""

    def __init__(self, controller: Controller, loop_metrics_path: Path):
        self.controller = controller
        self.loop_metrics_path = loop_metrics_path
        self._counters: dict[tuple[str, int], object] = {}

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
            body = exposition(self.loop_metrics_path)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        if path == "/healthz":
            return await send_json(send, 200, {"status": "alive"})
        return await self._proxy(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.controller.start_standby()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.controller.stop_all()  # children stop before the process exits
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope, receive, send) -> None:
        body = await read_body(scope, receive, self.controller.max_request_bytes)
        check_binary_header(scope, body)
        revision = self.controller.router.route()
        if revision is None:
            raise ServingError("no revision is serving", status=503)
        url_path = scope["raw_path"].decode("latin-1") + (
            ("?" + scope["query_string"].decode("latin-1")) if scope["query_string"] else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_HEADERS]
        headers.append((REVISION_HEADER.encode(), revision.name.encode()))
        revision.inflight += 1
        try:
            response = await self._send_to_ready_replica(revision, scope["method"], url_path, headers, body)
        finally:
            revision.inflight -= 1
        self._count(revision.name, response.status_code)
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
                       if k not in DROPPED_RESPONSE_HEADERS]
        out_headers.append((b"content-length", str(len(response.content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
        await send({"type": "http.response.body", "body": response.content})

    async def _send_to_ready_replica(self, revision: Revision, method: str, url_path: str, headers: list,
                                     body: bytes) -> httpx.Response:
        """Try the revision's ready replicas in turn; hold while none is ready, up to the hold time."""
        deadline = time.monotonic() + self.controller.hold_s
        failed: set[int] = set()
        last_problem = "no ready replica"
        while True:
            candidates = [r for r in revision.ready_replicas() if id(r) not in failed]
            for replica in candidates:
                try:
                    response = await self.controller.client.request(
                        method, replica.transformer.url + url_path, content=body, headers=headers)
                except httpx.TransportError as exc:
                    last_problem = f"replica {replica.index}: {type(exc).__name__}"
                    failed.add(id(replica))
                    continue
                if response.status_code == 503:
                    last_problem = f"replica {replica.index}: {_error_text(response)}"
                    failed.add(id(replica))
                    continue
                return response
            if time.monotonic() >= deadline:
                self._count(revision.name, 503)
                raise ServingError(f"revision {revision.name} (model version {revision.model_version}) has no "
                                   f"ready replica after waiting {self.controller.hold_s:g} s ({last_problem})",
                                   status=503)
            # Held (like Knative's activator) until a replica turns ready, re-checking now and then.
            await self.controller.wait_for_readiness_change(min(HOLD_RECHECK_S, deadline - time.monotonic()))
            failed.clear()

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
        if not isinstance(params, dict):
            raise ServingError("admin body must be a JSON object", 400)
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

    from mlops_assets.serving.protocol import GuardedHttpToolsProtocol
    from mlops_assets.serving.server import configure_logging

    configure_logging()
    settings = get_settings()
    controller = Controller(settings, args.model_name, args.http_port, args.max_request_bytes)
    app = IngressApp(controller, settings.home / "metrics" / "loop.prom")
    controller.write_state()
    config = uvicorn.Config(app, host=args.host, port=args.http_port, log_config=None, access_log=False,
                            loop="uvloop", http=GuardedHttpToolsProtocol, lifespan="on", timeout_keep_alive=65,
                            timeout_graceful_shutdown=20)
    log.info("ingress for %s on http://%s:%d", args.model_name, args.host, args.http_port)
    uvicorn.Server(config).run()


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error"))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]
