"""The KServe REST app for one model, served by uvicorn on the host we choose.

``kserve.ModelServer`` always binds 0.0.0.0 and adds per-request trace logging; here the same KServe
pieces (DataPlane, V1/V2 routers) are assembled into a FastAPI app with strict error handling and
our metrics, and served on 127.0.0.1 by default. kserve is imported inside functions: this module is
also used by the ingress, which does not need it.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from typing import Awaitable, Callable

import orjson

from mlops_assets.serving.metrics import ServerMetrics, exposition
from mlops_assets.serving.routing import REVISION_HEADER, REVISIONS
from mlops_assets.serving.validation import ServingError

log = logging.getLogger("mlops.serving")

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
INFERENCE_PREFIXES = ("/v1/models/", "/v2/models/")
BINARY_LENGTH_HEADER = b"inference-header-content-length"

Send = Callable[[dict], Awaitable[None]]


def header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def send_json(send: Send, status: int, content: dict, close: bool = False) -> None:
    body = orjson.dumps(content)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope: dict, receive, limit: int) -> bytes:
    """The request body, refusing (413) by Content-Length before reading, or once past the limit."""
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServingError("Content-Length is not a number", status=400)
        if int(declared) > limit:
            raise ServingError(f"payload of {int(declared)} bytes exceeds the limit of {limit} bytes",
                               status=413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServingError("client disconnected", status=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ServingError(f"payload exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class RequestGuard:
    """ASGI middleware: body size limit, disabled repository API, per-request metrics (no logging)."""

    def __init__(self, app, metrics: ServerMetrics, default_revision: str, max_request_bytes: int,
                 direct=None):
        self.app = app
        self.direct = direct  # the V1 :predict of the own model, without FastAPI (serving/v1_direct.py)
        self.metrics = metrics
        self.default_revision = default_revision
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if scope["path"].startswith("/v2/repository/"):
            return await send_json(send, 404, {"error": "the model repository API is disabled"})
        if not scope["path"].startswith(INFERENCE_PREFIXES):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            check_content_type(scope)
            body = await read_body(scope, receive, self.max_request_bytes)
            check_binary_header(scope, body)
        except ServingError as exc:
            await send_json(send_and_note_status, exc.status, {"error": exc.message}, close=True)
        else:
            if self.direct is not None and self.direct.matches(scope):
                await self.direct(scope, body, send_and_note_status)
            else:
                await self.app(scope, _replay(body), send_and_note_status)
        finally:
            revision = (header(scope, REVISION_HEADER.encode()) or b"").decode()
            revision = revision if revision in REVISIONS else self.default_revision
            self.metrics.observe_request(revision, status, time.perf_counter() - started)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _error_handlers() -> dict:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
    from starlette.exceptions import HTTPException

    def answer(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    async def serving_error(_, exc: ServingError):
        return answer(exc.status, exc.message)

    async def invalid_input(_, exc):
        message = str(exc)
        if message.startswith("Unrecognized request format: "):  # KServe's words for a JSON parse error
            message = "malformed JSON body: " + message.removeprefix("Unrecognized request format: ")
        return answer(400, message)

    async def model_not_found(_, exc):
        return answer(404, str(exc))

    async def model_not_ready(_, exc):
        return answer(503, str(exc))

    async def request_validation(_, exc: RequestValidationError):
        if any(error.get("type") == "json_invalid" for error in exc.errors()):
            return answer(400, "malformed JSON body")
        # FastAPI also reports the body failing the alternative `bytes` type: noise, left out.
        errors = [error for error in exc.errors() if "bytes" not in error.get("loc", ())] or exc.errors()
        problems = "; ".join(f"{'.'.join(map(str, error.get('loc', ())))}: {error.get('msg')}"
                             for error in errors[:5])
        return answer(422, f"invalid request body: {problems}")

    async def http_error(_, exc: HTTPException):  # unknown path (404), wrong method (405)
        return answer(exc.status_code, str(exc.detail))

    async def unexpected(_, exc: Exception):
        log.exception("unhandled error")
        return answer(500, f"internal error ({type(exc).__name__})")

    return {ServingError: serving_error, InvalidInput: invalid_input, ModelNotFound: model_not_found,
            ModelNotReady: model_not_ready, RequestValidationError: request_validation,
            HTTPException: http_error, Exception: unexpected}


def strict_dataplane(base):
    """KServe's DataPlane whose request decoding answers malformed input with InvalidInput (400):
    KServe's own raises ValueError and friends (a 500) on e.g. a bad binary-extension request."""
    from kserve.errors import InvalidInput

    class StrictDataPlane(base):
        def decode(self, *args, **kwargs):
            try:
                return super().decode(*args, **kwargs)
            except InvalidInput:
                raise
            except Exception as exc:
                raise InvalidInput(f"malformed request: {type(exc).__name__}: {exc}"[:300]) from None

        def decode_inference_request(self, body, headers, model_name):
            try:
                return super().decode_inference_request(body, headers, model_name)
            except InvalidInput:
                raise
            except Exception as exc:
                raise InvalidInput(f"malformed inference request: {type(exc).__name__}: {exc}"[:300]) from None

    return StrictDataPlane


V1_CONTENT_TYPES = {"", "application/json", "application/x-www-form-urlencoded"}
V2_CONTENT_TYPES = {"", "application/json", "application/octet-stream"}


def check_content_type(scope: dict) -> None:
    """V1 bodies are JSON (also unlabelled, or labelled as curl's default form); V2 bodies are JSON or
    the binary tensor extension. KServe would read e.g. an octet-stream V1 body as JSON anyway."""
    raw = header(scope, b"content-type") or b""
    media = raw.split(b";")[0].strip().lower().decode("latin-1")
    allowed = V1_CONTENT_TYPES if scope["path"].startswith("/v1/") else V2_CONTENT_TYPES
    if media not in allowed and not media.endswith("+json"):
        raise ServingError(f"request body must be JSON sent as 'Content-Type: application/json', "
                           f"got content type '{media}'", status=415)


def check_binary_header(scope: dict, body: bytes) -> None:
    """The Open Inference Protocol binary extension: the JSON part's length must be a valid length."""
    declared = header(scope, BINARY_LENGTH_HEADER)
    if declared is None:
        return
    if not declared.isdigit() or len(declared) > 12:
        raise ServingError(f"{BINARY_LENGTH_HEADER.decode()} must be a non-negative integer, "
                           f"got {declared[:40].decode('latin-1')!r}", status=400)
    if int(declared) > len(body):
        raise ServingError(f"{BINARY_LENGTH_HEADER.decode()} is {int(declared)} but the body has only "
                           f"{len(body)} bytes", status=400)


def build_app(model, metrics: ServerMetrics, default_revision: str,
              max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
    """FastAPI app with KServe's V1 and V2 endpoints for ``model``, wrapped in :class:`RequestGuard`."""
    from fastapi import FastAPI, Response
    from fastapi.exceptions import FastAPIDeprecationWarning
    from fastapi.responses import JSONResponse
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    from mlops_assets.serving.v1_direct import DirectV1Predict

    # kserve's V1 handlers build ORJSONResponse, deprecated in this FastAPI: one warning per request.
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    repository = ModelRepository()
    repository.update(model)
    dataplane = strict_dataplane(DataPlane)(model_registry=repository)
    handlers = _error_handlers()
    app = FastAPI(title=f"mlops {model.name}", docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers=handlers)

    async def metrics_endpoint() -> Response:
        return Response(exposition(), media_type="text/plain; version=0.0.4")

    async def ready() -> JSONResponse:
        if model.ready:
            return JSONResponse({"ready": True, "model_version": getattr(model, "model_version", None),
                                 "explainer_warm": getattr(model, "explainer_warm", None)})
        reason = getattr(model, "load_error", None) or "model not loaded"
        return JSONResponse({"ready": False, "error": reason}, status_code=503)

    app.add_api_route("/", dataplane.live, methods=["GET"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    app.add_api_route("/v2/health/ready", ready, methods=["GET"])  # before KServe's, which ignores models
    extension = ModelRepositoryExtension(model_registry=repository)
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    return RequestGuard(app, metrics, default_revision, max_request_bytes,
                        direct=DirectV1Predict(model.name, dataplane, handlers))


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (imports, model, Feast registry: ~300k objects) out of the
    garbage collector's reach: a full collection over it takes 100-300 ms on this machine, a pause
    every request queued behind it would pay. Requests' own garbage is still collected as usual."""
    gc.collect()
    gc.freeze()


def serve(app, host: str, port: int) -> None:
    """Run uvicorn quietly (no access log); SIGTERM drains in-flight requests, then exits."""
    import uvicorn

    from mlops_assets.serving.protocol import GuardedHttpToolsProtocol

    freeze_startup_heap()

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            loop="uvloop", http=GuardedHttpToolsProtocol, lifespan="off",
                            timeout_keep_alive=65, timeout_graceful_shutdown=15)
    uvicorn.Server(config).run()


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlops").setLevel(logging.INFO)


def run_model_server(args) -> None:
    """Entry of the predictor and transformer roles (see ``__main__``)."""
    from mlops_assets.settings import get_settings

    configure_logging()
    settings = get_settings()
    metrics = ServerMetrics(args.model_name, args.role)
    model = _create_model(args, settings, metrics)
    if not model.load():
        log.error("%s %s is not ready; serving 503 on readiness", args.role, args.model_name)
    metrics.prime(args.revision, getattr(model, "model_version", None))
    app = build_app(model, metrics, args.revision, args.max_request_bytes)
    log.info("%s %s (%s) on http://%s:%d", args.role, args.model_name, args.revision, args.host, args.http_port)
    serve(app, args.host, args.http_port)


def _create_model(args, settings, metrics: ServerMetrics):
    if args.role == "predictor":
        from mlops_assets.serving.predictor import ChurnPredictor

        return ChurnPredictor(args.model_name, settings, args.model_version, metrics=metrics,
                              revision=args.revision)
    from kserve import context
    from kserve.predictor_config import PredictorConfig

    from mlops_assets.monitoring.sink_client import open_prediction_log  # file, or the stack's sink
    from mlops_assets.serving.transformer import ChurnTransformer

    if not args.predictor_host:
        raise SystemExit("--predictor_host is required for the transformer role")
    context.set_predictor_config(PredictorConfig(
        predictor_host=args.predictor_host, predictor_protocol="v1",
        predictor_request_timeout_seconds=args.predictor_timeout))
    return ChurnTransformer(args.model_name, settings, args.revision,
                            open_prediction_log(settings, args.prediction_log_max_bytes, args.revision), metrics,
                            predictor_timeout_s=args.predictor_timeout)
