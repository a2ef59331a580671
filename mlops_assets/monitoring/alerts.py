"""Alerts that act: Prometheus fires, Alertmanager posts to the sink's ``/alerts`` webhook (stored in
S3), and this sensor turns each newly firing alert into the matching run.

- ``MLOpsDataDrift``, ``MLOpsModelAccuracyDrop``, ``MLOpsModelAccuracyBelowFloor`` -> ``retrain_job``,
  under the same cool-down as the drift and performance sensors (retrains from any source share it);
- ``MLOpsCanaryErrors`` -> the ``rollback`` job (no cool-down: a failing canary is rolled back now).

The cursor is the key of the last webhook object read; an alert is identified by its fingerprint
and start time (the run key), so Alertmanager's repeats of the same firing never start a second run;
a drift/decay alert whose report a retrain run already answers (the drift and performance sensors
read the same reports) starts nothing.
"""

from __future__ import annotations

import json
import time
from typing import Iterable

import dagster as dg

from mlops_assets import automation
from mlops_assets.naming import MODEL_TAG, job_name, model_key

RETRAIN_ALERTS = {"MLOpsDataDrift": "drift", "MLOpsModelAccuracyDrop": "performance",
                  "MLOpsModelAccuracyBelowFloor": "performance"}
ROLLBACK_ALERTS = {"MLOpsCanaryErrors"}
ALERT_SENSOR_INTERVAL_SECONDS = 5


def firing(payloads: Iterable[dict]) -> list[dict]:
    """The firing alerts of webhook payloads, first occurrence of each (fingerprint, startsAt)."""
    seen, out = set(), []
    for payload in payloads:
        for alert in payload.get("alerts") or []:
            if alert.get("status") != "firing":
                continue
            key = (alert.get("fingerprint"), alert.get("startsAt"))
            if key not in seen:
                seen.add(key)
                out.append(alert)
    return out


def _run_key(alert: dict) -> str:
    return f"alert-{alert.get('fingerprint')}-{alert.get('startsAt')}"


def _tags(alert: dict, trigger: str) -> dict[str, str]:
    labels = alert.get("labels") or {}
    summary = (alert.get("annotations") or {}).get("summary", "")
    return {"mlops/trigger": trigger, "mlops/alert": labels.get("alertname", ""),
            "mlops/alert_fingerprint": str(alert.get("fingerprint")), "mlops/reason": summary[:200]}


def _answered_by(latest, instance: dg.DagsterInstance, name: str, model: str) -> str | None:
    """The gauge an alert fires on comes from the latest drift (or performance) report: a retrain
    run created after the traffic that report judged already answers it (the drift and performance
    sensors read the same reports)."""
    if latest is None:
        return None
    key = model_key(model, automation.DRIFT_REPORT if RETRAIN_ALERTS[name] == "drift" else automation.MODEL_PERFORMANCE)
    records = instance.fetch_materializations(key, limit=1).records
    if records and latest.create_timestamp.timestamp() >= automation.judged_until(records[0]):
        return f"retrain run {latest.dagster_run.run_id[:8]}, started after the latest report, already answers it"
    return None


def build_alert_sensor(retrain_job, rollback_job, settings, cooldown_minutes: float | None = None,
                       model_name: str | None = None) -> dg.SensorDefinition:
    cooldown_minutes = settings.retrain_cooldown_minutes if cooldown_minutes is None else cooldown_minutes

    model = settings.model_name

    @dg.sensor(name=job_name(model, "alert_sensor"), jobs=[retrain_job, rollback_job],
               default_status=automation.default_status(settings),
               minimum_interval_seconds=ALERT_SENSOR_INTERVAL_SECONDS,
               description="Act on Alertmanager's alerts: retrain on drift/decay, roll back a failing canary.")
    def alert_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        from mlops_assets.resources import monitoring as store

        monitoring = store(settings)  # this model's store (a sensor has no run to pick a model from)
        cursor = json.loads(context.cursor) if context.cursor else {}
        entries = monitoring.alerts(after=cursor.get("after", ""))
        if not entries:
            return dg.SensorResult(skip_reason="no new alert notifications")
        cursor["after"] = entries[-1][0]
        requests, skipped = [], []
        for alert in firing(payload for _, payload in entries):
            name = (alert.get("labels") or {}).get("alertname", "")
            about = (alert.get("labels") or {}).get("model_name")
            if model_name and about and about != model_name:
                skipped.append(f"{name}: about model {about}, not {model_name}")
                continue
            if name in ROLLBACK_ALERTS:
                requests.append(dg.RunRequest(run_key=_run_key(alert), job_name=rollback_job.name,
                                              tags={**_tags(alert, f"alert:{name}"), MODEL_TAG: model}))
            elif name in RETRAIN_ALERTS:
                latest = automation.latest_retrain_run(context.instance, model)
                answered = _answered_by(latest, context.instance, name, model)
                if answered:
                    skipped.append(f"{name}: {answered}")
                    continue
                last = max(cursor.get("last_trigger_time", 0.0),
                           latest.create_timestamp.timestamp() if latest else 0.0)
                since = time.time() - last
                if since < cooldown_minutes * 60 or any(r.job_name == retrain_job.name for r in requests):
                    skipped.append(f"{name}: cooling down (last retrain {since / 60:.1f} min ago, "
                                   f"cool-down {cooldown_minutes:g} min)")
                    continue
                cursor["last_trigger_time"] = time.time()
                requests.append(dg.RunRequest(run_key=_run_key(alert), job_name=retrain_job.name,
                                              tags={**_tags(alert, f"alert:{name}"), MODEL_TAG: model},
                                              run_config=automation.retrain_run_config(settings)))
            else:
                skipped.append(f"{name}: no action for this alert")
        if not requests:
            return dg.SensorResult(skip_reason="; ".join(skipped) or "only resolved alerts",
                                   cursor=json.dumps(cursor))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))

    return alert_sensor


def alert_sensors(settings, retrain_job, rollback_job) -> list[dg.SensorDefinition]:
    """The alert sensor where alerts arrive through the sink (stack); none otherwise."""
    if not settings.sink_url:
        return []
    return [build_alert_sensor(retrain_job, rollback_job, settings, model_name=settings.model_name)]
