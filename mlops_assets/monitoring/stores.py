"""Where monitoring reads the prediction log and labels and puts reports and loop gauges.

One resource (``monitoring``), chosen once by profile in resources.py:

- :class:`LocalMonitoring`: the serving's log files and label files in MLOPS_HOME, reports on disk,
  gauges in the textfile the local ingress serves;
- :class:`StackMonitoring`: the sink's hour-partitioned objects in S3 (events and labels), labels
  delivered with ``POST /labels``, reports uploaded to S3 and linked by URL, gauges pushed to the
  Pushgateway. Nothing is read from local disk.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from mlops_assets.atomic import atomic_path, atomic_write_text
from mlops_assets.serving.prediction_log import log_files
from mlops_assets.settings import Settings


REPORT_URL_SECONDS = 7 * 24 * 3600


_FILE_SLACK = timedelta(hours=1)


def split_log_files(log_dir: Path, start: pd.Timestamp, end: pd.Timestamp
                    ) -> tuple[list[Path], list[Path]]:
    """Log files that may hold rows of the window, and all the other log files."""
    inside, outside = [], []
    for path, hour in log_files(log_dir):  # the writer's own naming and order
        near = start.floor("h") - _FILE_SLACK <= hour < end + _FILE_SLACK
        (inside if near else outside).append(path)
    return inside, outside



class LocalMonitoring:
    def __init__(self, settings: Settings):
        self.settings = settings

    # --- the log -----------------------------------------------------------------------------
    def log_chunks(self, start: datetime, end: datetime) -> tuple[list[Iterable[str]], list[Iterable[str]]]:
        """(line sources that may hold the window's records, all other line sources)."""
        inside, outside = split_log_files(self.settings.prediction_log_dir, start, end)
        return [_file_lines(p) for p in inside], [_file_lines(p) for p in outside]

    def label_lines(self) -> Iterable[str]:
        folder = self.settings.serving_dir / "labels"
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            yield from path.read_text(encoding="utf-8", errors="replace").splitlines()

    def label_sources(self, since: datetime) -> list[tuple[str, Iterable[str]]]:
        """(name, lines) of each label file written at or after ``since``."""
        folder = self.settings.serving_dir / "labels"
        paths = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        return [(str(path), _file_lines(path)) for path in paths if path.stat().st_mtime >= since.timestamp()]

    def deliver_labels(self, labels: Mapping[str, int]) -> str:
        """The feedback path: a JSON Lines file dropped where monitoring reads labels."""
        path = (self.settings.serving_dir / "labels" /
                f"labels-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}.jsonl")
        atomic_write_text(path, "".join(json.dumps({"request_id": rid, "label": label}) + "\n"
                                        for rid, label in labels.items()))
        return str(path)

    # --- outputs -----------------------------------------------------------------------------
    def write_partition(self, frame: pd.DataFrame, day: str, version: str) -> str:
        path = self.settings.model_home / "prediction_log" / f"date={day}" / f"{version}.parquet"
        if not path.exists():  # same content, same file: re-materializing is a no-op on disk
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp, index=False)
        return str(path)

    def report_path(self, name: str) -> Path:
        return self.settings.reports_dir / name

    def alerts(self, after: str = "") -> list[tuple[str, dict]]:
        """Alertmanager webhook payloads received after ``after`` (none here: no webhook locally)."""
        return []

    def publish_report(self, path: Path) -> str:
        return path.as_uri()

    def set_gauges(self, **values: float | int | None) -> str:
        from mlops_assets.monitoring.loop_metrics import write_loop_gauges

        return str(write_loop_gauges(self.settings, **values))


class StackMonitoring(LocalMonitoring):
    """The sink's objects in S3, the sink's label endpoint, reports in S3, the Pushgateway."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from mlops_assets.monitoring.object_log import ObjectLog

        self.objects = ObjectLog.from_settings(settings)

    def log_chunks(self, start, end):
        from mlops_assets.monitoring.object_log import EVENTS, hours_around, records_from_events

        self.settings.export_s3_env()
        low, high = hours_around(start, end)
        keys = self.objects.keys(EVENTS)
        inside = set(self.objects.keys(EVENTS, low, high)) if keys else set()
        model = self.settings.model_name
        records, _ = records_from_events(self.objects.lines([k for k in keys if k in inside]), model)
        others, _ = records_from_events(self.objects.lines([k for k in keys if k not in inside]), model)
        return [records], [others]

    def label_lines(self) -> Iterable[str]:
        from mlops_assets.monitoring.object_log import LABELS

        return self.objects.lines(self.objects.keys(LABELS))

    def label_sources(self, since: datetime) -> list[tuple[str, Iterable[str]]]:
        """(s3 key, lines) of each label object in the hours from ``since`` on."""
        from mlops_assets.monitoring.object_log import LABELS, hours_around

        low, high = hours_around(since, datetime.now(timezone.utc))
        return [(f"s3://{self.settings.s3_bucket}/{key}", self.objects.lines([key]))
                for key in self.objects.keys(LABELS, low, high)]

    def alerts(self, after: str = "") -> list[tuple[str, dict]]:
        from mlops_assets.monitoring.object_log import ALERTS

        out = []
        for key in self.objects.keys(ALERTS, after=after):
            out.extend((key, json.loads(line)) for line in self.objects.lines([key]) if line.strip())
        return out

    def deliver_labels(self, labels: Mapping[str, int]) -> str:
        import httpx

        url = f"{self.settings.sink_url}/labels"
        body = {"labels": [{"request_id": rid, "label": int(label)} for rid, label in labels.items()]}
        try:
            response = httpx.post(url, json=body, timeout=max(30.0, self.settings.service_timeout_s))
        except httpx.HTTPError as exc:
            raise RuntimeError(f"sink at {url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise RuntimeError(f"sink at {url} refused the labels: {response.status_code} {response.text[:200]}")
        return url

    def _put(self, key: str, body: bytes, content_type: str) -> str:
        self.objects.client.put_object(Bucket=self.settings.s3_bucket, Key=key, Body=body,
                                       ContentType=content_type)
        return f"s3://{self.settings.s3_bucket}/{key}"

    def write_partition(self, frame: pd.DataFrame, day: str, version: str) -> str:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self._put(f"prediction-log/daily/date={day}/{version}.parquet", buffer.getvalue(),
                         "application/vnd.apache.parquet")

    def report_path(self, name: str) -> Path:
        return self.settings.scratch_dir / "reports" / name  # written here, then uploaded

    def publish_report(self, path: Path) -> str:
        """Upload to ``s3://<bucket>/reports/...``; returns a pre-signed URL (valid a week) that opens
        in a browser without credentials."""
        import mimetypes

        relative = path.relative_to(self.settings.scratch_dir / "reports").as_posix()
        self._put(f"reports/{relative}", path.read_bytes(), mimetypes.guess_type(path.name)[0] or "text/html")
        return self.objects.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.s3_bucket, "Key": f"reports/{relative}"},
            ExpiresIn=REPORT_URL_SECONDS)

    def set_gauges(self, **values: float | int | None) -> str:
        """One Pushgateway group per gauge (``job=mlops-loop``, ``model_name``, ``gauge``), so each
        asset replaces only its own; ``None`` deletes the gauge (unknown, not zero)."""
        from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway

        from mlops_assets.monitoring.loop_metrics import LOOP_GAUGES

        url = self.settings.pushgateway_url
        for key, value in values.items():
            metric, help_text = LOOP_GAUGES[key]
            grouping = {"model_name": self.settings.model_name, "gauge": key}
            try:
                if value is None:
                    delete_from_gateway(url, job="mlops-loop", grouping_key=grouping,
                                        timeout=self.settings.service_timeout_s)
                    continue
                registry = CollectorRegistry()
                Gauge(metric, help_text, registry=registry).set(float(value))
                push_to_gateway(url, job="mlops-loop", registry=registry, grouping_key=grouping,
                                timeout=self.settings.service_timeout_s)
            except OSError as exc:
                raise RuntimeError(f"Pushgateway at {url} unreachable: {exc}") from exc
        return url


def _file_lines(path: Path) -> Iterable[str]:
    with path.open("r", encoding="utf-8", errors="replace") as lines:
        yield from lines
