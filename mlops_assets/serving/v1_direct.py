"""The V1 ``:predict`` call of the server's own model, answered without FastAPI's routing.

Every entity request crosses two model servers (transformer, predictor), and FastAPI's middleware
stack, route matching, dependency solving and Request object cost each 0.15-0.3 ms of CPU a request
for this one endpoint: the predictor app takes 0.22-0.43 ms per call through FastAPI, 0.08-0.11 ms
through this handler (in process, ``benchmarks/hop_benchmark.py``). This handler makes the same calls KServe's
``V1Endpoints.predict`` makes (readiness, ``DataPlane.decode``, ``infer``, ``encode``), answers with
the same JSON, and maps errors through the app's own exception handlers, so clients see no
difference. Every other path (``:explain``, V2, metadata, health, unknown models) goes to FastAPI.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import orjson

Handler = Callable[[object, Exception], Awaitable[object]]


class DirectV1Predict:
    def __init__(self, model_name: str, dataplane, handlers: dict[type, Handler]):
        from kserve.errors import ModelNotReady

        self.model_name = model_name
        self.path = f"/v1/models/{model_name}:predict"
        self.dataplane = dataplane
        self.handlers = handlers
        self._not_ready = ModelNotReady

    def matches(self, scope: dict) -> bool:
        return scope["path"] == self.path and not scope["query_string"]

    async def __call__(self, scope: dict, body: bytes, send) -> None:
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        try:
            status, (content, response_headers, is_json) = 200, await self._predict(body, headers)
        except Exception as exc:  # the app's handler for the nearest class, as Starlette picks it
            handler = next(self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers)
            error = await handler(None, exc)
            status, content, response_headers, is_json = error.status_code, error.body, {}, True
        out = [(key.lower().encode("latin-1"), str(value).encode("latin-1"))
               for key, value in response_headers.items() if key.lower() != "content-length"]
        if is_json and not any(key == b"content-type" for key, _ in out):
            out.append((b"content-type", b"application/json"))
        if isinstance(content, str):
            content = content.encode()
        out.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})

    async def _predict(self, body: bytes, headers: dict) -> tuple[bytes | str, dict, bool]:
        """(body, headers, whether the body is the JSON encoding of the model's answer)"""
        dataplane, name = self.dataplane, self.model_name
        if not await dataplane.model_ready(name, True):
            raise self._not_ready(name)
        request, attributes = dataplane.decode(body=body, headers=headers)
        response, response_headers = await dataplane.infer(model_name=name, request=request, headers=headers)
        response, encode_headers = dataplane.encode(model_name=name, response=response, headers=headers,
                                                    req_attributes=attributes)
        response_headers.update(encode_headers)
        if isinstance(response, (bytes, str)):  # sent as is, like KServe's plain Response
            return response, response_headers, False
        options = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY  # those of FastAPI's ORJSONResponse
        return orjson.dumps(response, option=options), response_headers, True
