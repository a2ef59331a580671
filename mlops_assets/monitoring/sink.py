"""The prediction-log sink: KServe's payload logger (CloudEvents) in, hour-partitioned objects in S3 out.

    python -m mlops_assets.monitoring.sink [--host 127.0.0.1] [--port 55600]

Routes
    POST /events    one CloudEvent (also at /), binary mode (``ce-*`` headers + JSON body) or structured mode
                    (``application/cloudevents+json``). Types: KServe's
                    ``org.kubeflow.serving.inference.request`` / ``.response`` (the pair shares ``ce-id``;
                    the reader joins them) and ``org.mlops.prediction.log`` (a list of prediction
                    records, sent by the local serving processes of the ``stack`` profile).
    POST /labels    ``{"labels": [{"request_id": "...", "label": 1} | {"entity_id": 7, "ts": "...", "label": 0}]}``
    POST /alerts    Alertmanager's webhook; kept for the alert sensor (monitoring/alerts.py).
    GET  /healthz   200 once the bucket answers.   GET /metrics   Prometheus counters.

Nothing is acknowledged before it is durable: a request is answered 2xx only after the object that
holds it was written to S3. Concurrent requests are committed together (group commit): one writer
thread collects what arrived, writes one object per hour partition, then releases the waiters. A
malformed event is answered 400 with the reason; S3 failing is 503 (the sender retries).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlops_assets.monitoring.object_log import (
    ALERTS,
    EVENTS,
    KSERVE_REQUEST,
    KSERVE_RESPONSE,
    LABELS,
    MLOPS_RECORDS,
    ObjectLog,
    validate_labels,
)
from mlops_assets.settings import get_settings

EVENT_TYPES = (KSERVE_REQUEST, KSERVE_RESPONSE, MLOPS_RECORDS)
REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")
EXTENSIONS = ("inferenceservicename", "component", "endpoint", "namespace")  # KServe's; the model is the first
MAX_BODY = 16 * 1024 * 1024


class BadEvent(ValueError):
    """The request is not an acceptable CloudEvent; the message says why (HTTP 400)."""


def parse_cloudevent(headers, body: bytes) -> dict:
    """One stored line from a binary- or structured-mode CloudEvent."""
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    try:
        payload = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadEvent("the body is not JSON") from None
    if content_type == "application/cloudevents+json":
        if not isinstance(payload, dict):
            raise BadEvent("a structured CloudEvent must be a JSON object")
        attributes = {k: payload.get(k) for k in REQUIRED_ATTRIBUTES + ("time",)}
        attributes.update({k: payload[k] for k in EXTENSIONS if isinstance(payload.get(k), str)})
        data = payload.get("data")
    else:
        attributes = {k: headers.get(f"ce-{k}") for k in REQUIRED_ATTRIBUTES + ("time",)}
        data = payload
        for extension in EXTENSIONS:
            if headers.get(f"ce-{extension}"):
                attributes[extension] = headers.get(f"ce-{extension}")
    missing = [f"ce-{k}" for k in REQUIRED_ATTRIBUTES if not attributes.get(k)]
    if missing:
        raise BadEvent(f"not a CloudEvent: missing {', '.join(missing)}")
    if attributes["specversion"] != "1.0":
        raise BadEvent(f"unsupported CloudEvents specversion {attributes['specversion']!r} (1.0 expected)")
    if attributes["type"] not in EVENT_TYPES:
        raise BadEvent(f"unknown event type {attributes['type']!r}; accepted: {', '.join(EVENT_TYPES)}")
    if attributes["type"] == MLOPS_RECORDS:
        if not isinstance(data, list) or not all(isinstance(r, dict) and isinstance(r.get("request_id"), str)
                                                 for r in data):
            raise BadEvent(f"{MLOPS_RECORDS} data must be a list of records with a request_id")
    elif not isinstance(data, dict):
        raise BadEvent(f"{attributes['type']} data must be a JSON object")
    attributes["received"] = datetime.now(timezone.utc).isoformat()
    return {**attributes, "data": data}


class GroupCommitter:
    """Collects lines per stream; one writer thread turns each batch into objects, then acks."""

    def __init__(self, store: ObjectLog, linger_s: float = 0.02):
        self.store = store
        self.linger_s = linger_s
        self._pending: list[tuple[str, list[bytes], "_Ticket"]] = []
        self._cond = threading.Condition()
        self.objects_written = 0
        self.lines_written = 0
        threading.Thread(target=self._run, daemon=True, name="sink-writer").start()

    def write(self, stream: str, lines: list[bytes], timeout: float = 30.0) -> None:
        ticket = _Ticket()
        with self._cond:
            self._pending.append((stream, lines, ticket))
            self._cond.notify()
        if not ticket.done.wait(timeout):
            raise TimeoutError(f"no durable write within {timeout:.0f} s")
        if ticket.error:
            raise ticket.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(self.linger_s)  # let concurrent requests join the batch
            with self._cond:
                batch, self._pending = self._pending, []
            by_stream: dict[str, list[bytes]] = {}
            for stream, lines, _ in batch:
                by_stream.setdefault(stream, []).extend(lines)
            error = None
            try:
                for stream, lines in by_stream.items():
                    self.store.put_lines(stream, lines)
                    self.objects_written += 1
                    self.lines_written += len(lines)
            except Exception as exc:  # S3 refused or unreachable: nobody in this batch is acked
                error = exc
            for _, _, ticket in batch:
                ticket.error = error
                ticket.done.set()


class _Ticket:
    def __init__(self):
        self.done = threading.Event()
        self.error: Exception | None = None


def make_handler(committer: GroupCommitter):
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    accepted = Counter("mlops_sink_events", "CloudEvents stored", ["type"], registry=registry)
    rejected = Counter("mlops_sink_rejected", "requests refused", ["reason"], registry=registry)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # one line per request would dominate the sink's CPU
            pass

        def _reply(self, status: int, body: dict | bytes, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok, reason = committer.store.reachable()
                return self._reply(200 if ok else 503, {"ok": ok, "reason": reason})
            if self.path == "/metrics":
                return self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                rejected.labels("too_large").inc()
                self.rfile.read(length)
                return self._reply(413, {"error": f"body of {length} bytes exceeds {MAX_BODY}"})
            body = self.rfile.read(length)
            try:
                stream, lines, kind = self._lines(body)
            except ValueError as exc:  # BadEvent, or a label that names its problem
                rejected.labels("malformed").inc()
                return self._reply(400, {"error": str(exc)})
            except LookupError:
                return self._reply(404, {"error": f"no route {self.path}"})
            try:
                committer.write(stream, lines)
            except Exception as exc:
                rejected.labels("storage").inc()
                return self._reply(503, {"error": f"not stored ({committer.store.describe()}): {exc}"})
            accepted.labels(kind).inc(len(lines))
            self._reply(202 if kind not in ("label", "alert") else 200, {"stored": len(lines)})

        def _lines(self, body: bytes) -> tuple[str, list[bytes], str]:
            if self.path in ("/", "", "/events"):
                event = parse_cloudevent(self.headers, body)
                return EVENTS, [json.dumps(event).encode()], event["type"]
            if self.path == "/labels":
                try:
                    payload = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise BadEvent("the body is not JSON") from None
                labels = validate_labels(payload)  # raises ValueError naming the bad item
                return LABELS, [json.dumps(label).encode() for label in labels], "label"
            if self.path == "/alerts":
                try:
                    payload = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise BadEvent("the body is not JSON") from None
                if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
                    raise BadEvent("an Alertmanager webhook payload has an `alerts` list")
                payload["received"] = datetime.now(timezone.utc).isoformat()
                payload["id"] = uuid.uuid4().hex
                return ALERTS, [json.dumps(payload).encode()], "alert"
            raise LookupError(self.path)

    return Handler


def serve(host: str, port: int) -> None:
    settings = get_settings()
    committer = GroupCommitter(ObjectLog.from_settings(settings))
    server = ThreadingHTTPServer((host, port), make_handler(committer))
    server.daemon_threads = True
    print(f"prediction-log sink on http://{host}:{port} -> {committer.store.describe()}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.monitoring.sink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=55600)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
