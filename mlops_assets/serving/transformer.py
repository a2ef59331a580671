"""The transformer: a ``kserve.Model`` in front of the predictor, as in KServe's transformer pattern.

Accepts V1 ``{"instances": [...]}`` holding either entity ids (``{"customer_id": 7}``; features come
from the Feast online store) or complete feature rows; validates them, forwards the feature rows to
the predictor over HTTP (``--predictor_host``), and on the way back attaches the model version and
revision and appends each prediction to the prediction log. The predictor is called through the
pooled aiohttp client of :mod:`~mlops_assets.serving.upstream` rather than KServe's httpx-based
``InferenceRESTClient``: the same requests, at a third of the CPU. The ingress's copy of a request for
a shadow challenger (header ``x-mlops-shadow: 1``) is logged with ``"shadow": true`` and the client
request's id; nobody reads its answer.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from kserve import Model
from kserve.protocol.infer_type import InferRequest

from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.serving.metrics import ServerMetrics
from mlops_assets.serving.prediction_log import PredictionSink
from mlops_assets.serving.routing import REVISION_HEADER, is_shadow, request_revision
from mlops_assets.serving.upstream import Upstream, UpstreamError, UpstreamResponse
from mlops_assets.serving.validation import (
    FeatureSchema,
    InvalidRequest,
    ServingError,
    check_decoded,
    check_entity_id,
    check_feature_row,
    check_instances,
)
from mlops_assets.settings import Settings


class PredictorUnavailable(ServingError):
    """The predictor could not be reached or failed; the ingress may retry another revision."""

    status = 503


@dataclass
class PendingRequest:
    """What postprocess needs from preprocess to write the log lines of one request."""

    request_id: str
    revision: str
    entity_ids: list[int | None]
    rows: list[dict[str, Any]]
    shadow: bool = False


_pending: contextvars.ContextVar[PendingRequest] = contextvars.ContextVar("pending_request")


class ChurnTransformer(Model):
    def __init__(self, name: str, settings: Settings, revision: str, prediction_log: PredictionSink,
                 metrics: ServerMetrics, max_instances: int = 1000, predictor_timeout_s: float = 30.0):
        super().__init__(name)
        self.settings = settings
        self.revision = revision
        self.prediction_log = prediction_log
        self.metrics = metrics
        self.max_instances = max_instances
        self.spec = settings.dataset_spec()
        self.schema = FeatureSchema.from_spec(self.spec)
        self.features = FeatureStoreClient(settings)
        self.feature_refs: list[str] = []
        self._metadata: dict | None = None
        self.ttl: timedelta | None = None
        self.upstream = Upstream(timeout_s=predictor_timeout_s)

    def load(self) -> bool:
        self.feature_refs = self.features.feature_refs()
        self.ttl = self.features.feature_view_ttl()
        self.features.online_features([0], self.feature_refs)  # opens the SQLite connection now
        self.ready = True
        return True

    async def get_input_types(self) -> list[dict]:
        """The predictor's Open Inference Protocol metadata (from the model signature)."""
        return (await self._predictor_metadata()).get("inputs", [])

    async def get_output_types(self) -> list[dict]:
        return (await self._predictor_metadata()).get("outputs", [])

    async def _predictor_metadata(self) -> dict:
        if self._metadata is None:
            try:
                response = await self.upstream.request("GET", f"{self._predictor_url}/v2/models/{self.name}")
            except UpstreamError as exc:
                raise PredictorUnavailable(f"predictor metadata unavailable: {exc.kind}") from None
            if response.status != 200:
                raise PredictorUnavailable(f"predictor metadata unavailable: HTTP {response.status}")
            self._metadata = response.json()
        return self._metadata

    @property
    def _predictor_url(self) -> str:
        return self.predictor_config.predictor_base_url

    async def preprocess(self, payload: Any, headers: dict | None = None) -> dict:
        if isinstance(payload, InferRequest):
            raise InvalidRequest(f"the transformer speaks the V1 protocol: POST {{\"instances\": [...]}} "
                                 f"to /v1/models/{self.name}:predict")
        instances = check_instances(check_decoded(payload, headers), self.max_instances)
        headers = headers if headers is not None else {}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        headers["x-request-id"] = request_id
        revision = request_revision(headers, self.revision)
        if self._is_entity_request(instances):
            entity_ids = [check_entity_id(row[self.spec.entity], i, self.spec.entity)
                          for i, row in enumerate(instances)]
            rows = self._lookup(entity_ids, revision)
        else:
            entity_ids = [self._optional_entity_id(row, i) for i, row in enumerate(instances)]
            rows = [check_feature_row(row, i, self.schema, optional=(self.spec.entity,))
                    for i, row in enumerate(instances)]
        _pending.set(PendingRequest(request_id, revision, entity_ids, rows, is_shadow(headers)))
        return {"instances": rows}

    def _is_entity_request(self, instances: list) -> bool:
        is_entity = [isinstance(row, dict) and set(row) == {self.spec.entity} for row in instances]
        if any(is_entity) and not all(is_entity):
            raise InvalidRequest(f"instance {is_entity.index(not is_entity[0])} differs in kind: send either "
                                 f"only '{self.spec.entity}' ids or only complete feature rows")
        return is_entity[0]

    def _optional_entity_id(self, row: Any, index: int) -> int | None:
        if isinstance(row, dict) and self.spec.entity in row:
            return check_entity_id(row[self.spec.entity], index, self.spec.entity)
        return None

    def _lookup(self, entity_ids: list[int], revision: str) -> list[dict[str, Any]]:
        started = time.perf_counter()
        response = self.features.online_response(entity_ids, self.feature_refs)
        columns = response.to_dict()
        self.metrics.observe_feature_lookup(revision, time.perf_counter() - started)
        names = self.schema.names
        rows = [{name: columns[name][i] for name in names} for i in range(len(entity_ids))]
        absent = [[name for name in names if _is_missing(row[name])] for row in rows]
        unknown = [entity_ids[i] for i, missing in enumerate(absent) if len(missing) == len(names)]
        expired = self._expired(response, entity_ids, unknown)
        if unknown or expired:
            problems = []
            if unknown:
                self.metrics.observe_lookup_misses(revision, "unknown", len(unknown))
                problems.append(f"unknown {self.spec.entity} {unknown}: no features in the online store")
            if expired:
                self.metrics.observe_lookup_misses(revision, "expired", len(expired))
                latest = max(expired.values()).isoformat()
                problems.append(f"{self.spec.entity} {sorted(expired)}: features expired: their latest row "
                                f"({latest}) is older than the feature view's TTL of {_days(self.ttl)}")
            raise InvalidRequest("; ".join(problems), status=404)
        incomplete = [i for i, missing in enumerate(absent) if missing]
        if incomplete:
            i = incomplete[0]
            raise InvalidRequest(f"{self.spec.entity} {entity_ids[i]} has no value for features {absent[i]}",
                                 status=422)
        return rows

    def _expired(self, response, entity_ids: list[int], unknown: list[int]) -> dict[int, datetime]:
        """Ids whose feature row is older than the feature view's TTL, with that row's time."""
        if self.ttl is None:
            return {}
        proto = response.proto
        names = list(proto.metadata.feature_names.val)
        first_feature = names.index(self.schema.names[0])
        stamps = proto.results[first_feature].event_timestamps
        oldest_allowed = time.time() - self.ttl.total_seconds()
        skip = set(unknown)
        return {entity_id: datetime.fromtimestamp(stamps[i].seconds, timezone.utc)
                for i, entity_id in enumerate(entity_ids)
                if entity_id not in skip and stamps[i].seconds and stamps[i].seconds < oldest_allowed}

    def _forward_headers(self, headers: dict | None) -> dict:
        headers = headers or {}
        return {"content-type": "application/json", "x-request-id": headers.get("x-request-id", ""),
                REVISION_HEADER: request_revision(headers, self.revision)}

    async def predict(self, payload: dict, headers: dict | None = None, response_headers=None) -> dict:
        return await self._call_predictor(f"/v1/models/{self.name}:predict", payload, headers)

    async def explain(self, payload: dict, headers: dict | None = None) -> dict:
        return await self._call_predictor(f"/v1/models/{self.name}:explain", payload, headers)

    async def _call_predictor(self, path: str, payload: dict, headers: dict | None) -> dict:
        """Predictor 4xx stay 4xx with the predictor's message; anything else is a 503.

        One retry on a broken connection: a pooled keep-alive connection may have been closed by
        the predictor (restart, idle timeout), and predictions are side-effect free."""
        url, forward = self._predictor_url + path, self._forward_headers(headers)
        try:
            try:
                response = await self.upstream.post_json(url, payload, forward)
            except UpstreamError as exc:
                if exc.kind == "Timeout":
                    raise
                response = await self.upstream.post_json(url, payload, forward)
        except UpstreamError as exc:
            raise PredictorUnavailable(f"predictor unreachable: {exc.kind}") from None
        if response.status == 200:
            return response.json()
        message = _error_message(response)
        if 400 <= response.status < 500:
            raise InvalidRequest(f"predictor rejected the request: {message}", status=response.status)
        raise PredictorUnavailable(f"predictor answered {response.status}: {message}")

    async def postprocess(self, result: dict, headers: dict | None = None, response_headers=None) -> dict:
        pending = _pending.get()
        if "explanations" in result:
            return {**result, "revision": pending.revision}
        scores, classes, version = result["predictions"], result["classes"], str(result["model_version"])
        request_ids = ([pending.request_id] if len(scores) == 1
                       else [f"{pending.request_id}-{i}" for i in range(len(scores))])
        self._log_predictions(pending, request_ids, scores, classes, version)
        self.metrics.observe_predictions(pending.revision, scores, classes)
        self.metrics.set_model_version(pending.revision, version)
        return {"predictions": scores, "classes": classes, "model_name": self.name,
                "model_version": version, "revision": pending.revision, "request_ids": request_ids}

    def _log_predictions(self, pending: PendingRequest, request_ids: list[str], scores: list[float],
                         classes: list[int], version: str) -> None:
        ts = datetime.now(timezone.utc).isoformat()
        extra = {"shadow": True} if pending.shadow else {}
        self.prediction_log.append(
            {"request_id": request_id, "ts": ts, "entity_id": entity_id, "features": row,
             "score": score, "prediction": predicted, "model_version": version, "revision": pending.revision,
             **extra}
            for request_id, entity_id, row, score, predicted
            in zip(request_ids, pending.entity_ids, pending.rows, scores, classes))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN


def _error_message(response: UpstreamResponse) -> str:
    return response.error_text(limit=200)


def _days(ttl: timedelta) -> str:
    days = ttl.total_seconds() / 86400
    return f"{days:g} days"
