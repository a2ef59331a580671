"""Alerts that act, with the real Prometheus and Alertmanager of the stack: the drift gauge pushed to
the Pushgateway and a canary failing more than stable fire their rules; Alertmanager posts to the
sink's webhook; the alert sensor turns them into a retrain request and a rollback request."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import ThreadingHTTPServer

import dagster as dg
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import MetricsHandler

from mlops_assets import automation
from mlops_assets.monitoring.alerts import alert_sensors, build_alert_sensor
from mlops_assets.naming import job_name
from mlops_assets.monitoring.stores import StackMonitoring
from mlops_assets.deployment.rollback import rollback
from tests.stack.conftest import stack_settings

pytestmark = pytest.mark.integration


class ServingMetrics:
    """What a stable and a canary transformer expose on /metrics; the canary answers 30% with 500."""

    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        labels = ("model_name", "revision", "role", "code")
        self.requests = Counter("mlops_requests_total", "requests", labels, registry=self.registry)
        self.errors = Counter("mlops_request_errors_total", "errors", labels, registry=self.registry)
        self.model, self.stop = model, threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler.factory(self.registry))

    def _traffic(self):
        while not self.stop.is_set():
            for revision, failing in (("stable", 0), ("canary", 3)):
                self.requests.labels(self.model, revision, "transformer", "200").inc(10 - failing)
                if failing:
                    self.requests.labels(self.model, revision, "transformer", "500").inc(failing)
                    self.errors.labels(self.model, revision, "transformer", "500").inc(failing)
            time.sleep(1)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._traffic, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()


def test_prometheus_alerts_reach_the_sensor_as_a_retrain_and_a_rollback(stack, tmp_path, monkeypatch):
    model = f"churn-{uuid.uuid4().hex[:6]}"
    settings = stack_settings(stack, tmp_path, MLOPS_MODEL_NAME=model)
    for name, value in settings.s3_client_env().items():
        monkeypatch.setenv(name, value)
    monitoring = StackMonitoring(settings)
    start_after = (monitoring.alerts() or [("", {})])[-1][0]
    with ServingMetrics(model) as serving:
        (stack.root / "serving-targets.json").write_text(json.dumps(
            [{"targets": [f"127.0.0.1:{serving.server.server_port}"], "labels": {"job": "mlops-serving"}}]))
        monitoring.set_gauges(drift_share=0.6, drifted_columns=4)  # what drift_report does in stack
        deadline, names = time.monotonic() + 180, set()
        while time.monotonic() < deadline and not {"MLOpsDataDrift", "MLOpsCanaryErrors"} <= names:
            time.sleep(3)
            names = {alert["labels"]["alertname"] for _, payload in monitoring.alerts(after=start_after)
                     for alert in payload["alerts"] if alert["status"] == "firing"
                     and alert["labels"].get("model_name") == model}
    monitoring.set_gauges(drift_share=None, drifted_columns=None)
    (stack.root / "serving-targets.json").write_text("[]")
    assert {"MLOpsDataDrift", "MLOpsCanaryErrors"} <= names, names

    retrain_job = automation.build_automation(settings).retrain_job
    sensor = build_alert_sensor(retrain_job, rollback, settings, cooldown_minutes=10, model_name=model)
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(instance=instance, cursor=json.dumps({"after": start_after}),
                                      resources={"monitoring": monitoring})
    result = sensor(context)
    by_job = {}
    for request in result.run_requests:
        by_job.setdefault(request.job_name, []).append(request)
    assert len(by_job[job_name(model, "retrain_job")]) == 1
    retrain = by_job[job_name(model, "retrain_job")][0]
    assert retrain.tags["mlops/trigger"] == "alert:MLOpsDataDrift"
    assert retrain.tags["mlops/alert"] == "MLOpsDataDrift"
    assert retrain.run_key.startswith("alert-")
    assert [r.tags["mlops/alert"] for r in by_job["rollback"]] == ["MLOpsCanaryErrors"]
    assert {r.tags["mlops/model"] for r in result.run_requests} == {model}
    cursor = json.loads(result.cursor)
    assert cursor["after"] > start_after and cursor["last_trigger_time"] > time.time() - 60

    # the same notifications again, inside the cool-down: the retrain is refused, with the reason
    again = sensor(dg.build_sensor_context(instance=instance, resources={"monitoring": monitoring},
                                           cursor=json.dumps({"after": start_after,
                                                              "last_trigger_time": time.time()})))
    assert [r.job_name for r in again.run_requests] == ["rollback"]
    # alerts about another model are not this code location's to act on
    other = build_alert_sensor(retrain_job, rollback, settings, cooldown_minutes=10, model_name="other")
    ignored = other(dg.build_sensor_context(instance=instance, cursor=json.dumps({"after": start_after}),
                                            resources={"monitoring": monitoring}))
    assert not ignored.run_requests and f"about model {model}" in ignored.skip_reason.skip_message
    # nothing new since the cursor: nothing to do
    idle = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor,
                                          resources={"monitoring": monitoring}))
    assert not idle.run_requests


def test_the_alert_sensor_exists_only_where_alerts_arrive_through_the_sink(stack, tmp_path):
    from mlops_assets.settings import get_settings

    settings = stack_settings(stack, tmp_path)
    retrain_job = automation.build_automation(settings).retrain_job
    assert [s.name for s in alert_sensors(settings, retrain_job, rollback)] == [job_name(settings.model_name, "alert_sensor")]
    assert alert_sensors(get_settings({"MLOPS_HOME": str(tmp_path)}), retrain_job, rollback) == []
