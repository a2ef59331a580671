"""`online_evaluation`: the online A/B gate. A rollout with ``ab.mode`` ``canary`` or ``shadow``
leaves the new champion next to the stable revision (``inference_service``); each materialization
of this asset judges it on the labelled predictions both revisions made since the canary started
(:mod:`.ab_test`: Newcombe interval, non-inferiority margin, minimum sample, maximum wait) and acts:

- ``promote``: the canary takes all traffic (an `inference_service` materialization says so);
- ``rollback``: the canary stops, @champion moves back to @previous, and `champion_model` and
  `inference_service` get materializations saying what is champion and serving now (as the
  `rollback` job records them); the blocking check ``canary_not_inferior`` fails;
- ``wait``: nothing changes.

The policy is the one validated and stored with the deployment by the rollout that started the
canary, so every evaluation of one canary judges it by the same rules. A label delivered since the
canary started that names no logged request fails the step naming the label file and the ids,
before anything serving changes. The ``<model>_online_gate_sensor`` (built per model by the asset
factory) runs this asset while a canary is under evaluation.
"""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from mlops_assets.naming import MODEL_TAG, job_name, model_key

from mlops_assets.monitoring.assets import _markdown, classification_metrics
from mlops_assets.monitoring.prediction_log import LABEL_COLUMN, read_prediction_log, unknown_label_ids
from mlops_assets.monitoring.stores import LocalMonitoring
from mlops_assets.registry.assets import RELEASE_POOL, record_champion
from mlops_assets.registry.client import CHAMPION, PREVIOUS, ModelRegistry

from .ab_test import Decision, compare, decide, policy_from
from .assets import inference_service, record_serving
from .backend import ServingBackend, ServingError

ONLINE_CHECK = "canary_not_inferior"


def revision_rows(log: pd.DataFrame, gate: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(canary, stable) labelled rows of the gate's two versions: the stable side only what clients
    got, the canary side its shadow copies in shadow mode and its client answers otherwise."""
    labelled = log[log[LABEL_COLUMN].notna()]
    versions = labelled["model_version"].astype(str)
    shadow = labelled["shadow"].astype(bool)
    canary = labelled[(labelled["revision"] == "canary") & (versions == str(gate["canary_version"]))
                      & (shadow if gate.get("mode") == "shadow" else ~shadow)]
    stable = labelled[(labelled["revision"] == "stable") & (versions == str(gate["stable_version"])) & ~shadow]
    return canary, stable


def correct(rows: pd.DataFrame) -> int:
    return int((rows["prediction"].to_numpy(dtype=int) == rows[LABEL_COLUMN].to_numpy(dtype=int)).sum())


def _reject_unknown_labels(monitoring: LocalMonitoring, since: datetime) -> None:
    unknown = unknown_label_ids(monitoring, since)
    if unknown:
        listed = "; ".join(f"{name}: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
                           for name, ids in unknown.items())
        raise dg.Failure(description=f"labels name request ids no logged prediction has ({listed}): fix or remove "
                                     "them; the canary and stable revisions keep serving as they were",
                         metadata={"unknown_label_ids": dg.MetadataValue.json(unknown)})


def _act(context, decision: Decision, gate: dict, serving: ServingBackend, registry: ModelRegistry) -> dict:
    """Carry out the decision; returns what changed (for the metadata)."""
    canary_version = str(gate["canary_version"])
    if decision.action == "wait":
        return {"changed": "nothing"}
    if decision.action == "promote":
        result = serving.promote_canary()
        record_serving(context, result, f"online A/B gate promoted v{canary_version}: {decision.reason}")
        return {"changed": f"v{canary_version} promoted to 100%"}
    result = serving.rollback_canary()
    changed = {"changed": f"canary v{canary_version} rolled back; v{result['model_version']} serves"}
    if registry.version_of(CHAMPION) == canary_version and registry.version_of(PREVIOUS):
        moves = registry.rollback(dagster_run_id=context.run.run_id,
                                  reason=f"online A/B gate rolled back v{canary_version}: {decision.reason}")
        record_champion(context, registry, moves[0].to_version, f"online A/B gate rolled back v{canary_version}")
        changed["champion_restored_to"] = moves[0].to_version
    record_serving(context, result, f"online A/B gate rolled back v{canary_version}: {decision.reason}")
    return changed


def _per_revision(canary: pd.DataFrame, stable: pd.DataFrame) -> str:
    table = pd.DataFrame({name: classification_metrics(rows) for name, rows in
                          (("canary", canary), ("stable", stable)) if len(rows)}).T
    return _markdown(table) if len(table) else "no labelled predictions yet"


@dg.asset(group_name="deployment", deps=[inference_service], pool=RELEASE_POOL, code_version="1",
          check_specs=[dg.AssetCheckSpec(ONLINE_CHECK, asset="online_evaluation", blocking=True,
                                         description="the canary is not significantly worse than stable on "
                                                     "labelled live traffic (else it was rolled back)")],
          description="The online A/B gate: canary vs stable on labelled live traffic; promote, roll back or wait.")
def online_evaluation(context: dg.AssetExecutionContext, serving: dg.ResourceParam[ServingBackend],
                      registry: dg.ResourceParam[ModelRegistry],
                      monitoring: dg.ResourceParam[LocalMonitoring]) -> dg.MaterializeResult:
    gate = serving.online_gate()
    if gate is None:
        return dg.MaterializeResult(
            metadata={"decision": "none", "note": "no canary is under online evaluation"},
            check_results=[dg.AssetCheckResult(check_name=ONLINE_CHECK, passed=True,
                                               description="nothing to judge: no canary under online evaluation")])
    try:
        policy = policy_from(gate)
    except ValueError as exc:
        raise dg.Failure(description=f"{exc}; nothing changed") from exc
    started = pd.Timestamp(gate["started_at"]).to_pydatetime()
    now = datetime.now(timezone.utc)
    _reject_unknown_labels(monitoring, started)
    log, stats = read_prediction_log(monitoring, started, now, include_shadow=True)
    canary, stable = revision_rows(log, gate)
    comparison = compare(correct(canary), len(canary), correct(stable), len(stable), policy.alpha)
    decision = decide(policy, comparison, (now - started).total_seconds())
    context.log.info(f"online A/B gate, v{gate['canary_version']} ({gate['mode']}) vs v{gate['stable_version']}: "
                     f"{decision.action}: {decision.reason}")
    try:
        changed = _act(context, decision, gate, serving, registry)
    except ServingError as exc:
        raise dg.Failure(description=f"decided to {decision.action}, but serving refused: {exc}") from exc
    numbers = {k: v for k, v in comparison.as_dict().items() if v is not None}
    metadata = {"decision": decision.action, "reason": decision.reason, "mode": gate["mode"],
                "canary_version": str(gate["canary_version"]), "stable_version": str(gate["stable_version"]),
                "canary_started_at": gate["started_at"], "elapsed_s": round(decision.elapsed_s, 1),
                "policy": dg.MetadataValue.json(policy.policy()), "logged_rows": stats["rows"],
                "per_revision": dg.MetadataValue.md(_per_revision(canary, stable)), **numbers, **changed}
    check = dg.AssetCheckResult(check_name=ONLINE_CHECK, passed=decision.action != "rollback",
                                description=f"{decision.action}: {decision.reason}",
                                metadata={"decision": decision.action, **numbers})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


ONLINE_JOB_NAME = "online_evaluation_job"
ONLINE_SENSOR_INTERVAL_S = 60


def online_evaluation_job(model: str):
    return dg.define_asset_job(job_name(model, ONLINE_JOB_NAME),
                               selection=dg.AssetSelection.assets(model_key(model, "online_evaluation")),
                               tags={MODEL_TAG: model},
                               description="Judge the canary under online A/B evaluation once.")


def build_online_gate_sensor(job, serving: ServingBackend, model: str) -> dg.SensorDefinition:
    """While ``model``'s canary is under online A/B evaluation, ``job`` every minute, one run at a time
    (``serving`` is the model's backend: a sensor has no run to pick a model from)."""
    @dg.sensor(name=job_name(model, "online_gate_sensor"), job=job, minimum_interval_seconds=ONLINE_SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="While a canary is under online A/B evaluation, judge it every minute (one run at a time).")
    def online_gate_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        try:
            gate = serving.online_gate()
        except ServingError as exc:
            return dg.SensorResult(skip_reason=f"what serves is unknown: {exc}")
        if gate is None:
            return dg.SensorResult(skip_reason="no canary is under online A/B evaluation")
        active = context.instance.get_run_records(dg.RunsFilter(job_name=job.name, statuses=[
            dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]), limit=1)
        if active:
            return dg.SensorResult(skip_reason=f"evaluation run {active[0].dagster_run.run_id[:8]} still running")
        tick = int(datetime.now(timezone.utc).timestamp() // ONLINE_SENSOR_INTERVAL_S)
        return dg.SensorResult(run_requests=[dg.RunRequest(
            run_key=f"{gate['canary_version']}@{gate['started_at']}#{tick}",
            tags={"mlops/trigger": "online_gate", "mlops/canary_version": str(gate["canary_version"]), MODEL_TAG: model})])

    return online_gate_sensor
