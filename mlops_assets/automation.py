"""Jobs, sensors and schedules that close the loop: drift or decay -> one retraining run.

:func:`build_automation` builds them from the ``Settings`` it is given (nothing here reads settings
at import). Each sensor looks at the latest materialization of the asset it watches, keys its run
request on that materialization's storage id (the same report never triggers twice) and keeps a
cool-down in its cursor (JSON ``{"last_report_id", "last_trigger_time"}``) against retraining storms.
Every decision not to run is a ``SkipReason`` saying why, visible on the sensor's ticks.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping

import dagster as dg
import yaml

from mlops_assets.naming import MODEL_TAG, job_name, model_key, model_keys
from mlops_assets.settings import Settings

# A retrain starts from the data: the dataset picks up the labelled production traffic.
RETRAIN_ASSETS = ("dataset", "feature_table", "feature_store", "training_set", "holdout_set", "candidate_model", "model_explanations",
                  "champion_model", "inference_service")
# Base names: each model's jobs, sensors and schedules are ``<model>_<base>`` (mlops_assets.naming).
RETRAIN_JOB = "retrain_job"
DRIFT_CHECK_JOB = "drift_check_job"
ONLINE_FEATURES_JOB = "online_features_job"
DRIFT_REPORT = "drift_report"
MODEL_PERFORMANCE = "model_performance"
ONLINE_REFRESH_CRON = "*/30 * * * *"
# Dagster's sensor daemon evaluates sensors in a loop every 5 s (dagster/_daemon/sensor.py,
# MIN_INTERVAL_LOOP_TIME); a sensor is skipped while less than its minimum interval has passed since its
# last tick. Anything below 5 s therefore means "every daemon loop": a report is judged within ~5 s
# (an asset sensor or a run-status sensor is polled by the same loop, so none reacts faster).
# 15 s cost up to 20 s (15 s + the loop) of the 20 s loop budget.
SENSOR_INTERVAL_SECONDS = 1


def retrain_assets(settings: Settings) -> tuple[str, ...]:
    """In ``k8s`` the rollout is its own job on ``k8s_job_executor``, started by a sensor on a new
    champion (mlops_assets.deployment.job); elsewhere the retrain run rolls out itself."""
    return RETRAIN_ASSETS if settings.profile != "k8s" else tuple(a for a in RETRAIN_ASSETS if a != "inference_service")


@dataclass(frozen=True)
class Verdict:
    retrain: bool
    reason: str  # why not, or what triggered
    tags: Mapping[str, str]


def _value(metadata: Mapping, key: str):
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def drift_verdict(metadata: Mapping, threshold: float) -> Verdict:
    status = _value(metadata, "status")
    if status != "ok":
        notes = _value(metadata, "notes") or ""
        return Verdict(False, f"status {status}{': ' + notes if notes else ''}; not judged", {})
    share = _value(metadata, "drift_share")
    if not isinstance(share, (int, float)):
        return Verdict(False, "the report has no numeric drift_share; not judged", {})
    drifted = _value(metadata, "drifted_columns") or []
    if share < threshold:
        return Verdict(False, f"drift share {share:.3f} below the threshold {threshold:.3f}", {})
    return Verdict(True, f"drift share {share:.3f} >= {threshold:.3f} (drifted: {', '.join(drifted)})",
                   {"mlops/drift_share": f"{share:.3f}"})


def performance_verdict(metadata: Mapping) -> Verdict:
    if _value(metadata, "decayed") is not True:
        return Verdict(False, f"no decay (decay status {_value(metadata, 'decay_status')})", {})
    drops = {k: float(_value(metadata, k)) for k in ("accuracy_drop", "roc_auc_drop") if k in metadata}
    text = ", ".join(f"{k} {v:.3f}" for k, v in drops.items())
    return Verdict(True, f"model performance decayed ({text})",
                   {f"mlops/{k}": f"{v:.3f}" for k, v in drops.items()})


def judged_until(event) -> float:
    """When the traffic a report judged ends (its ``window_end``), else when it was written: a
    retrain created after that already learns from that traffic, so it answers the report."""
    end = _value(event.asset_materialization.metadata, "window_end")
    try:
        return min(event.timestamp, datetime.fromisoformat(str(end)).timestamp()) if end else event.timestamp
    except ValueError:
        return event.timestamp


def evaluate_retrain_trigger(context: dg.SensorEvaluationContext, asset_key: dg.AssetKey,
                             verdict: Callable[[Mapping], Verdict], trigger: str,
                             cooldown_minutes: float, run_config: Callable[[], dict] = dict) -> dg.SensorResult:
    """One tick: the latest report of ``asset_key`` -> a retrain run request or a skip reason."""
    model = asset_key.path[0]
    cursor = json.loads(context.cursor) if context.cursor else {}
    # The latest materialization as a record: its storage id is the report's identity.
    records = context.instance.fetch_materializations(asset_key, limit=1).records
    if not records:
        return dg.SensorResult(skip_reason=f"no {asset_key.to_user_string()} materialization yet")
    event = records[0]
    report_id = event.storage_id
    if cursor.get("last_report_id") == report_id:
        return dg.SensorResult(skip_reason=f"report {report_id} already evaluated; waiting for a new one")
    decision = verdict(event.asset_materialization.metadata)
    if not decision.retrain:
        cursor["last_report_id"] = report_id
        return dg.SensorResult(skip_reason=f"report {report_id}: {decision.reason}",
                               cursor=json.dumps(cursor))
    # Retrains from any source (either sensor, the schedule, a person) share one cool-down.
    latest = latest_retrain_run(context.instance, model)
    if latest is not None and latest.create_timestamp.timestamp() >= judged_until(event):
        cursor["last_report_id"] = report_id
        return dg.SensorResult(skip_reason=(
            f"report {report_id}: {decision.reason}; retrain run {latest.dagster_run.run_id[:8]}, "
            f"started after this report, already answers it"), cursor=json.dumps(cursor))
    last_trigger = max(cursor.get("last_trigger_time", 0.0), latest.create_timestamp.timestamp() if latest else 0.0)
    since = time.time() - last_trigger
    if since < cooldown_minutes * 60:
        # The report stays unseen, so it can still trigger once the cool-down is over.
        return dg.SensorResult(skip_reason=(
            f"report {report_id}: {decision.reason}, but cooling down: the last retrain was "
            f"triggered {since / 60:.1f} min ago (cool-down {cooldown_minutes:g} min)"))
    cursor.update(last_report_id=report_id, last_trigger_time=time.time())
    tags = {"mlops/trigger": trigger, MODEL_TAG: model, f"mlops/{asset_key.path[-1]}_id": str(report_id),
            "mlops/reason": decision.reason[:200], **decision.tags}
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=str(report_id), tags=tags,
                                                          run_config=run_config())],
                           cursor=json.dumps(cursor))


def latest_retrain_run(instance: dg.DagsterInstance, model: str):
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name(model, RETRAIN_JOB)), limit=1)
    return records[0] if records else None


def retrain_run_config(settings: Settings) -> dict:
    """Run config for automatic retrains: the model spec's settings, then ``retrain.yaml`` in the
    model's home if present (e.g. another model type, or a tolerance for the gate)."""
    path = settings.model_home / "retrain.yaml"
    extra = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    base = settings.model.run_config() if settings.model is not None else {}
    ops = {**(base.get("ops") or {})}
    for op, value in (extra.get("ops") or {}).items():
        merged = {**(ops.get(op, {}).get("config") or {}), **((value or {}).get("config") or {})}
        ops[op] = {**(value or {}), "config": merged}
    return {**extra, **({"ops": ops} if ops else {})}


def default_status(settings: Settings) -> dg.DefaultSensorStatus:
    """On this machine (local and stack) the daemon runs the loop without anyone switching it on;
    on a cluster an operator does."""
    return dg.DefaultSensorStatus.RUNNING if settings.profile != "k8s" else dg.DefaultSensorStatus.STOPPED


def build_drift_sensor(settings: Settings, threshold: float | None = None,
                       cooldown_minutes: float | None = None) -> dg.SensorDefinition:
    threshold = settings.drift_threshold if threshold is None else threshold
    cooldown = settings.retrain_cooldown_minutes if cooldown_minutes is None else cooldown_minutes

    model = settings.model_name

    @dg.sensor(name=job_name(model, "drift_sensor"), job_name=job_name(model, RETRAIN_JOB), default_status=default_status(settings),
               minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               description=f"Retrain when the latest drift report's drift share >= {threshold}.")
    def drift_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return evaluate_retrain_trigger(context, model_key(model, DRIFT_REPORT), lambda m: drift_verdict(m, threshold),
                                        "drift", cooldown, lambda: retrain_run_config(settings))

    return drift_sensor


def build_performance_sensor(settings: Settings, cooldown_minutes: float | None = None) -> dg.SensorDefinition:
    cooldown = settings.retrain_cooldown_minutes if cooldown_minutes is None else cooldown_minutes

    model = settings.model_name

    @dg.sensor(name=job_name(model, "performance_sensor"), job_name=job_name(model, RETRAIN_JOB), default_status=default_status(settings),
               minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               description="Retrain when model_performance reports decay below the champion.")
    def performance_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return evaluate_retrain_trigger(context, model_key(model, MODEL_PERFORMANCE), performance_verdict,
                                        "performance", cooldown, lambda: retrain_run_config(settings))

    return performance_sensor


@dataclass(frozen=True)
class Automation:
    jobs: list = field(default_factory=list)
    sensors: list = field(default_factory=list)
    schedules: list = field(default_factory=list)

    @property
    def retrain_job(self):
        return next(job for job in self.jobs if job.name.endswith(RETRAIN_JOB))


def build_automation(settings: Settings) -> Automation:
    """Every job, sensor and schedule of one model (``settings.model_name``), named ``<model>_<base>``
    and tagged with the model; in ``k8s`` also the deploy job and its sensor."""
    model = settings.model_name
    tags = {MODEL_TAG: model}

    def asset_job(base: str, assets, **kwargs):
        return dg.define_asset_job(job_name(model, base), selection=dg.AssetSelection.assets(*model_keys(model, assets)),
                                   tags=tags, **kwargs)

    # the spec's training settings as the job's defaults (the sensors add retrain.yaml per tick)
    spec_config = settings.model.run_config() if settings.model is not None else {}
    retrain_job = asset_job(RETRAIN_JOB, retrain_assets(settings), config=spec_config.get("ops") and spec_config or None)
    drift_check_job = asset_job(DRIFT_CHECK_JOB, [DRIFT_REPORT])
    online_job = asset_job(ONLINE_FEATURES_JOB, ["online_features"])
    schedule_status = dg.DefaultScheduleStatus(default_status(settings).value)
    automation = Automation(
        jobs=[retrain_job, drift_check_job, online_job],
        sensors=[build_drift_sensor(settings), build_performance_sensor(settings)],
        schedules=[
            dg.ScheduleDefinition(name=job_name(model, "hourly_drift_check"), job=drift_check_job,
                                  cron_schedule="0 * * * *", default_status=schedule_status),
            dg.ScheduleDefinition(name=job_name(model, "weekly_retrain"), job=retrain_job, cron_schedule="0 3 * * 1",
                                  tags={**tags, "mlops/trigger": "schedule"}, default_status=schedule_status),
            # fresh online features between retrains, on this machine and on a cluster alike
            dg.ScheduleDefinition(name=job_name(model, "online_features_refresh"), job=online_job,
                                  cron_schedule=ONLINE_REFRESH_CRON, default_status=dg.DefaultScheduleStatus.RUNNING,
                                  description="Incremental Feast materialization, independent of retraining."),
        ])
    if settings.profile == "k8s":
        from mlops_assets.deployment.job import deploy_job, deploy_on_new_champion

        job = deploy_job(settings)
        automation.jobs.append(job)
        automation.sensors.append(deploy_on_new_champion(job, model))
    return automation
