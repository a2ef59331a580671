"""Monitoring assets: the prediction log as a versioned daily table, and the served model's
performance once labels arrive, with a check that fails on decay."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.monitoring.prediction_log import (
    LABEL_COLUMN,
    frame_hash,
    read_prediction_log,
)
from mlops_assets.monitoring.stores import LocalMonitoring
from mlops_assets.settings import Settings

DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01")
PERFORMANCE_CHECK = "performance_not_decayed"


def window_bounds(window_hours: float, window_end: str | None) -> tuple[datetime, datetime]:
    """[end - window_hours, end), end = ``window_end`` (ISO-8601) or now, in UTC."""
    end = pd.Timestamp(window_end).to_pydatetime() if window_end else datetime.now(timezone.utc)
    end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    return end - timedelta(hours=window_hours), end


def log_stats_metadata(stats: dict[str, int]) -> dict[str, int]:
    keys = ("rows", "bad_lines", "labelled", "unknown_label_ids", "bad_label_lines", "files")
    return {key: int(stats[key]) for key in keys if key in stats}


# --- prediction_log ----------------------------------------------------------------------------

@dg.asset(group_name="monitoring", partitions_def=DAILY, code_version="1")
def prediction_log(context: dg.AssetExecutionContext,
                   monitoring: dg.ResourceParam[LocalMonitoring]) -> dg.MaterializeResult:
    """One day of served predictions (features, score, model version) with the labels known so far."""
    day = context.partition_key
    start = pd.Timestamp(day, tz="UTC").to_pydatetime()
    frame, stats = read_prediction_log(monitoring, start, start + timedelta(days=1))
    version = frame_hash(frame)
    path = monitoring.write_partition(frame, day, version)  # whole or not at all, keyed by content
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={**log_stats_metadata(stats), "path": dg.MetadataValue.path(path),
                  "model_versions": dg.MetadataValue.json(
                      sorted(map(str, frame["model_version"].dropna().unique())))},
    )


# --- model quality -----------------------------------------------------------------------------

def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mann-Whitney AUC (ties count half); None when only one class is present."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def reliability_table(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per equal-width score bin: rows, mean score, observed positive rate."""
    which = np.minimum((scores * bins).astype(int), bins - 1)
    table = pd.DataFrame({"bin": which, "score": scores, "label": labels}).groupby("bin").agg(
        rows=("label", "size"), mean_score=("score", "mean"), observed_rate=("label", "mean"))
    table.index = [f"{b / bins:.1f}-{(b + 1) / bins:.1f}" for b in table.index]
    return table


def classification_metrics(labelled: pd.DataFrame, bins: int = 10) -> dict[str, float | int | None]:
    labels = labelled[LABEL_COLUMN].to_numpy(dtype=int)
    scores = labelled["score"].to_numpy(dtype=float)
    if len(labels) == 0:
        return {"n": 0, "accuracy": None, "roc_auc": None, "brier": None, "ece": None}
    table = reliability_table(labels, scores, bins)
    ece = float((table["rows"] / len(labels) * (table["mean_score"] - table["observed_rate"]).abs()).sum())
    return {"n": len(labels),
            "accuracy": float((labelled["prediction"].to_numpy(dtype=int) == labels).mean()),
            "roc_auc": roc_auc(labels, scores),
            "brier": float(np.mean((scores - labels) ** 2)), "ece": ece}


# --- the reference the check compares with ------------------------------------------------------

def open_registry(settings: Settings):
    """The model registry, or None when the local MLflow store was never created (no model yet)."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # opening it would create an empty database as a side effect
    from mlops_assets.registry.client import ModelRegistry

    return ModelRegistry(settings)


def champion_reference(settings: Settings) -> dict | None:
    """The champion's holdout metrics from MLflow: {model_version, accuracy, roc_auc}, or None."""
    registry = open_registry(settings)
    version = registry.version_of("champion") if registry else None
    if version is None:
        return None
    metrics = registry.version_info(version)["metrics"]
    return {"model_version": version, "accuracy": metrics.get("holdout_accuracy"),
            "roc_auc": metrics.get("holdout_roc_auc")}


class PerformanceConfig(dg.Config):
    window_hours: float = 24.0
    window_end: str | None = None  # ISO-8601; default now
    min_labels: int = 50
    max_accuracy_drop: float = 0.05
    max_roc_auc_drop: float = 0.05
    # Override the champion's holdout metrics (otherwise read from MLflow).
    reference_accuracy: float | None = None
    reference_roc_auc: float | None = None
    calibration_bins: int = 10


def resolve_reference(config: PerformanceConfig, settings: Settings) -> dict | None:
    champion = None
    if config.reference_accuracy is None or config.reference_roc_auc is None:
        champion = champion_reference(settings)
    reference = {
        "model_version": champion.get("model_version") if champion else None,
        "accuracy": config.reference_accuracy if config.reference_accuracy is not None
        else (champion or {}).get("accuracy"),
        "roc_auc": config.reference_roc_auc if config.reference_roc_auc is not None
        else (champion or {}).get("roc_auc"),
    }
    return reference if reference["accuracy"] is not None or reference["roc_auc"] is not None else None


def evaluate_decay(labelled: pd.DataFrame, reference: dict | None,
                   config: PerformanceConfig) -> dict:
    """Compare the labelled window with the reference; ``decayed`` only when it could be judged.

    With a champion version known, only its own traffic is judged, so the old model's last hours
    do not make a freshly promoted champion look decayed.
    """
    if reference is None:
        return {"decay_status": "no_reference", "decayed": False}
    version = reference.get("model_version")
    rows = labelled[labelled["model_version"].astype(str) == version] if version else labelled
    if len(rows) < config.min_labels:
        return {"decay_status": "insufficient_labels", "decayed": False, "judged_rows": len(rows)}
    current = classification_metrics(rows, config.calibration_bins)
    drops = {f"{name}_drop": reference[name] - current[name] for name in ("accuracy", "roc_auc")
             if reference.get(name) is not None and current[name] is not None}
    limits = {"accuracy_drop": config.max_accuracy_drop, "roc_auc_drop": config.max_roc_auc_drop}
    decayed = any(drop > limits[name] for name, drop in drops.items())
    return {"decay_status": "decayed" if decayed else "ok", "decayed": decayed,
            "judged_rows": len(rows), **drops}


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(["", *map(str, table.columns)]) + " |"
    rule = "|" + "---|" * (len(table.columns) + 1)
    rows = ["| " + " | ".join([str(i), *(_cell(v) for v in row)]) + " |"
            for i, row in zip(table.index, table.itertuples(index=False))]
    return "\n".join([header, rule, *rows])


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else (
        f"{value:.4f}" if isinstance(value, float) else str(value))


def _numbers(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None and not isinstance(v, bool)}


@dg.asset(group_name="monitoring", deps=[prediction_log], code_version="1",
          check_specs=[dg.AssetCheckSpec(PERFORMANCE_CHECK, asset="model_performance",
                                         description="accuracy and ROC AUC within the allowed "
                                                     "drop below the champion's holdout metrics")])
def model_performance(context: dg.AssetExecutionContext, config: PerformanceConfig,
                      settings: dg.ResourceParam[Settings],
                      monitoring: dg.ResourceParam[LocalMonitoring]) -> dg.MaterializeResult:
    """Accuracy, ROC AUC, Brier score and calibration of the served model on labelled traffic."""
    start, end = window_bounds(config.window_hours, config.window_end)
    log, stats = read_prediction_log(monitoring, start, end)
    labelled = log[log[LABEL_COLUMN].notna()]
    enough = len(labelled) >= config.min_labels
    overall = classification_metrics(labelled, config.calibration_bins) if enough else {}
    reference = resolve_reference(config, settings)
    decay = evaluate_decay(labelled, reference, config)
    metadata = {**log_stats_metadata(stats), "status": "ok" if enough else "insufficient_labels",
                "window_start": start.isoformat(), "window_end": end.isoformat(),
                "decayed": decay["decayed"], "decay_status": decay["decay_status"],
                **_numbers({k: v for k, v in overall.items() if k != "n"}),
                **_numbers({k: v for k, v in decay.items() if k.endswith("_drop")})}
    if reference:
        metadata.update({f"reference_{k}": v for k, v in _numbers(reference).items()})
        metadata["reference_model_version"] = str(reference.get("model_version"))
    if enough:
        metadata["by_model_version"] = dg.MetadataValue.md(_markdown(pd.DataFrame(
            {v: classification_metrics(g, config.calibration_bins)
             for v, g in labelled.groupby(labelled["model_version"].astype(str))}).T))
        # per revision (stable/canary): what online_evaluation compares, here over the whole window
        metadata["by_revision"] = dg.MetadataValue.md(_markdown(pd.DataFrame(
            {f"{r} (v{', v'.join(sorted(g['model_version'].astype(str).unique()))})":
             classification_metrics(g, config.calibration_bins)
             for r, g in labelled.groupby(labelled["revision"].fillna("unknown").astype(str))}).T))
        metadata["calibration"] = dg.MetadataValue.md(_markdown(reliability_table(
            labelled[LABEL_COLUMN].to_numpy(dtype=int), labelled["score"].to_numpy(dtype=float),
            config.calibration_bins)))
        monitoring.set_gauges(accuracy=overall["accuracy"], roc_auc=overall["roc_auc"])
    else:
        metadata["note"] = (f"{len(labelled)} labelled rows in the window, fewer than the "
                            f"{config.min_labels} needed to report performance")
    check = dg.AssetCheckResult(
        check_name=PERFORMANCE_CHECK, passed=not decay["decayed"],
        description=_decay_description(decay, config),
        metadata={"decay_status": decay["decay_status"],
                  **_numbers({k: v for k, v in decay.items() if k != "decay_status"})})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _decay_description(decay: dict, config: PerformanceConfig) -> str:
    status = decay["decay_status"]
    if status == "no_reference":
        return "not judged: no champion holdout metrics and no reference in the config"
    if status == "insufficient_labels":
        return (f"not judged: {decay['judged_rows']} labelled rows of the reference model, "
                f"fewer than {config.min_labels}")
    drops = ", ".join(f"{k} {v:+.3f}" for k, v in decay.items() if k.endswith("_drop"))
    limits = f"limits: accuracy {config.max_accuracy_drop}, roc_auc {config.max_roc_auc_drop}"
    return f"{'decayed' if decay['decayed'] else 'within limits'}: {drops} ({limits})"
