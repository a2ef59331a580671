"""The prediction log, labels and alerts as hour-partitioned objects in S3 (written by the sink).

    s3://<bucket>/prediction-log/<stream>/hour=YYYYMMDDHH/<YYYYmmddTHHMMSS.ffffff>-<id>.jsonl

Objects are never rewritten: an "append" is a new object in the hour's partition, so a write is
durable and whole once ``put_object`` returns. ``events`` holds CloudEvents (one JSON per line);
:func:`records_from_events` turns them into prediction records (docs/CONTRACTS.md), joining KServe's
request and response events by their shared ``ce-id``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from mlops_assets.settings import Settings

EVENTS, LABELS, ALERTS = "events", "labels", "alerts"
PREFIX = "prediction-log"
KSERVE_REQUEST = "org.kubeflow.serving.inference.request"
KSERVE_RESPONSE = "org.kubeflow.serving.inference.response"
MLOPS_RECORDS = "org.mlops.prediction.log"


class ObjectLog:
    """Append and list JSON Lines objects under ``s3://bucket/prediction-log/<stream>/``."""

    def __init__(self, bucket: str, endpoint_url: str | None, timeout_s: float = 10.0,
                 credentials: dict[str, str] | None = None):
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.timeout_s = timeout_s
        self.credentials = credentials or {}  # else boto3's own chain (environment, profile, role)
        self._client = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "ObjectLog":
        keys = {"aws_access_key_id": settings.extra.get("AWS_ACCESS_KEY_ID"),
                "aws_secret_access_key": settings.extra.get("AWS_SECRET_ACCESS_KEY")}
        return cls(settings.s3_bucket, settings.s3_endpoint_url, settings.service_timeout_s,
                   {k: v for k, v in keys.items() if v})

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
                            retries={"max_attempts": 2, "mode": "standard"})
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config,
                                        region_name="us-east-1", **self.credentials)
        return self._client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{PREFIX} at {self.endpoint_url or 'AWS'}"

    def reachable(self) -> tuple[bool, str]:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True, "ok"
        except Exception as exc:
            return False, f"{self.describe()}: {exc}"

    # --- write -------------------------------------------------------------------------------
    def put_lines(self, stream: str, lines: list[bytes], now: datetime | None = None) -> str:
        now = now or datetime.now(timezone.utc)
        key = f"{PREFIX}/{stream}/hour={now:%Y%m%d%H}/{now:%Y%m%dT%H%M%S.%f}-{uuid.uuid4().hex[:8]}.jsonl"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"\n".join(lines) + b"\n")
        return key

    # --- read --------------------------------------------------------------------------------
    def keys(self, stream: str, start: datetime | None = None, end: datetime | None = None,
             after: str = "") -> list[str]:
        """Object keys of ``stream`` in write order; with ``start``/``end`` only the hours between."""
        prefix = f"{PREFIX}/{stream}/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, StartAfter=after or prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if start is not None and end is not None:
            first, last = f"{prefix}hour={start:%Y%m%d%H}", f"{prefix}hour={end:%Y%m%d%H}~"
            keys = [key for key in keys if first <= key <= last]
        return sorted(keys)

    def lines(self, keys: Iterable[str]) -> Iterator[str]:
        for key in keys:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            yield from body.decode("utf-8", errors="replace").splitlines()


def hours_around(start: datetime, end: datetime, slack: timedelta = timedelta(hours=1)) -> tuple[datetime, datetime]:
    return start - slack, end + slack


def records_from_events(lines: Iterable[str], model: str | None = None) -> tuple[list[str], int]:
    """Prediction-record JSON lines from stored CloudEvents, and the count of unusable events.

    ``org.mlops.prediction.log`` events carry records already; a KServe request event and the
    response event with the same id become one record per instance. With ``model``, events of
    another InferenceService (``inferenceservicename``) are left out."""
    records, bad = [], 0
    requests: dict[str, dict] = {}
    responses: dict[str, dict] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        kind = event.get("type")
        if model and event.get("inferenceservicename") not in (None, model):
            continue
        if kind == MLOPS_RECORDS:
            records.extend(json.dumps(record) for record in event.get("data") or [])
        elif kind == KSERVE_REQUEST:
            requests[event["id"]] = event
        elif kind == KSERVE_RESPONSE:
            responses[event["id"]] = event
    for event_id, request in requests.items():
        response = responses.get(event_id)
        if response is None:
            continue  # the response event may still be on its way: it joins on a later read
        pair, ok = _kserve_pair(event_id, request, response)
        records.extend(pair)
        bad += not ok
    return records, bad


def _kserve_pair(event_id: str, request: dict, response: dict) -> tuple[list[str], bool]:
    instances = (request.get("data") or {}).get("instances")
    body = response.get("data") or {}
    scores = body.get("predictions")
    if not isinstance(instances, list) or not isinstance(scores, list) or len(instances) != len(scores):
        return [], False
    classes = body.get("classes") or [int(float(score) >= 0.5) for score in scores]
    ids = body.get("request_ids") or ([event_id] if len(scores) == 1 else
                                      [f"{event_id}-{i}" for i in range(len(scores))])
    revision = request.get("component") or body.get("revision") or "predictor"
    out = []
    for request_id, instance, score, predicted in zip(ids, instances, scores, classes):
        if not isinstance(instance, dict):
            return [], False
        out.append(json.dumps({
            "request_id": request_id, "ts": request.get("time") or request.get("received"),
            "entity_id": next(iter(instance.values()), None), "features": instance, "score": score,
            "prediction": predicted, "model_version": str(body.get("model_version", "")), "revision": revision}))
    return out, True


def validate_labels(payload) -> list[dict]:
    """``{"labels": [...]}`` (or the bare list): each by ``request_id`` or by ``entity_id`` + ``ts``,
    with ``label`` 0 or 1. Raises ValueError naming the first bad item."""
    items = payload.get("labels") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not items:
        raise ValueError("expected {\"labels\": [...]} with at least one label")
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"labels[{index}] is not an object")
        label = item.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"labels[{index}].label must be 0 or 1, got {label!r}")
        if isinstance(item.get("request_id"), str) and item["request_id"]:
            out.append({"request_id": item["request_id"], "label": int(label)})
            continue
        entity, ts = item.get("entity_id"), item.get("ts")
        if isinstance(entity, bool) or not isinstance(entity, int) or not isinstance(ts, str):
            raise ValueError(f"labels[{index}] needs a request_id, or an integer entity_id and a ts")
        try:
            stamp = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"labels[{index}].ts={ts!r} is not an ISO-8601 time") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        out.append({"entity_id": entity, "ts": stamp.isoformat(), "label": int(label)})
    return out
