"""Prometheus series of the serving processes (names fixed in docs/CONTRACTS.md).

KServe's own histograms (request_preprocess_seconds, ...) live in the same default registry, so
one /metrics endpoint exposes both. Label children are cached: a request costs a few dict look-ups.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5)
SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))
SERVER_LABELS = ("model_name", "revision", "role")

REQUEST_LATENCY = Histogram("mlops_request_latency_seconds", "request latency seen by the server",
                            SERVER_LABELS, buckets=LATENCY_BUCKETS)
REQUESTS = Counter("mlops_requests_total", "inference requests by status code", SERVER_LABELS + ("code",))
ERRORS = Counter("mlops_request_errors_total", "inference requests answered 4xx or 5xx",
                 SERVER_LABELS + ("code",))
PREDICTIONS = Counter("mlops_predictions_total", "predictions by predicted class",
                      SERVER_LABELS + ("predicted_class",))
SCORES = Histogram("mlops_prediction_score", "churn score of each prediction", SERVER_LABELS,
                   buckets=SCORE_BUCKETS)
MODEL_VERSION = Gauge("mlops_model_version_info", "model version served (value 1)",
                      SERVER_LABELS + ("model_version",))
FEATURE_LOOKUP = Histogram("mlops_feature_lookup_seconds", "Feast online lookup latency", SERVER_LABELS,
                           buckets=LATENCY_BUCKETS)
LOOKUP_MISSES = Counter("mlops_feature_lookup_misses_total",
                        "entity ids without usable online features: unknown, or expired (older than the TTL)",
                        SERVER_LABELS + ("reason",))

_INGRESS_SERIES: tuple[Counter, Gauge] | None = None


def ingress_series() -> tuple[Counter, Gauge]:
    """(requests by model, revision and code; canary percent by model), registered only in the ingress
    process: a module-level gauge would make every model server expose a stale canary share of 0."""
    global _INGRESS_SERIES
    if _INGRESS_SERIES is None:
        _INGRESS_SERIES = (Counter("mlops_ingress_requests_total", "requests through the local ingress",
                                   ("model_name", "revision", "code")),
                           Gauge("mlops_canary_traffic_percent", "share of traffic routed to the canary",
                                 ("model_name",)))
    return _INGRESS_SERIES


class ServerMetrics:
    """The series of one server process; ``revision`` can differ per request (set by the ingress)."""

    def __init__(self, model_name: str, role: str):
        self.model_name = model_name
        self.role = role
        self._children: dict[tuple, object] = {}
        self._version_labels: set[tuple] = set()

    def _child(self, metric, revision: str, *extra: str):
        key = (id(metric), revision, *extra)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(self.model_name, revision, self.role, *extra)
            self._children[key] = child
        return child

    def observe_request(self, revision: str, code: int, seconds: float) -> None:
        code_label = str(code)
        self._child(REQUEST_LATENCY, revision).observe(seconds)
        self._child(REQUESTS, revision, code_label).inc()
        if code >= 400:
            self._child(ERRORS, revision, code_label).inc()

    def observe_predictions(self, revision: str, scores: Iterable[float], classes: Iterable[int]) -> None:
        histogram = self._child(SCORES, revision)
        for score in scores:
            histogram.observe(score)
        for predicted in classes:
            self._child(PREDICTIONS, revision, str(predicted)).inc()

    def observe_feature_lookup(self, revision: str, seconds: float) -> None:
        self._child(FEATURE_LOOKUP, revision).observe(seconds)

    def observe_lookup_misses(self, revision: str, reason: str, count: int) -> None:
        self._child(LOOKUP_MISSES, revision, reason).inc(count)

    def prime(self, revision: str, model_version: str | None) -> None:
        """Create every series at start-up, so /metrics lists them before the first request."""
        for metric in (REQUEST_LATENCY, SCORES, FEATURE_LOOKUP):
            self._child(metric, revision)
        self._child(REQUESTS, revision, "200")
        self._child(ERRORS, revision, "400")
        if self.role == "transformer":
            for reason in ("unknown", "expired"):
                self._child(LOOKUP_MISSES, revision, reason)
        for predicted in ("0", "1"):
            self._child(PREDICTIONS, revision, predicted)
        if model_version is not None:
            self.set_model_version(revision, model_version)

    def set_model_version(self, revision: str, model_version: str) -> None:
        """One info series per (revision, version) pair seen; earlier pairs drop to 0."""
        key = (revision, str(model_version))
        if key in self._version_labels:
            return
        for old_revision, old_version in self._version_labels:
            self._child(MODEL_VERSION, old_revision, old_version).set(0)
        self._version_labels = {key}
        self._child(MODEL_VERSION, revision, str(model_version)).set(1)


def exposition(loop_models: Iterable = ()) -> bytes:
    """The registry in text format, followed by the loop gauges of the given models' settings (merged)."""
    from mlops_assets.monitoring.loop_metrics import merged_loop_gauges_text

    return generate_latest(REGISTRY) + merged_loop_gauges_text(loop_models).encode()
