"""The drift report: a recent window of traffic against the training reference."""

from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from mlops_assets.drift.compute import DriftSummary, detect_drift
from mlops_assets.monitoring.assets import open_registry, prediction_log, window_bounds
from mlops_assets.monitoring.stores import LocalMonitoring
from mlops_assets.monitoring.prediction_log import feature_columns, read_prediction_log
from mlops_assets.settings import Settings

PREDICTION_COLUMN = "score"


class DriftConfig(dg.Config):
    window_hours: float = 24.0
    window_end: str | None = None  # ISO-8601; default now
    min_rows: int = 200  # fewer rows in the window: "insufficient_data", never "no drift"
    fast_path_min_rows: int = 50_000  # from this many rows on, per-column tests on a profile
    column_threshold: float = 0.1  # effect size at which a column counts as drifted
    alpha: float = 0.05  # significance the fast path also requires
    score_reference: bool = True  # score the reference with the champion for prediction drift


def champion_scores(settings: Settings, reference: pd.DataFrame, features: list[str]
                    ) -> pd.Series | None:
    """The champion's churn scores for the reference rows, or None when there is no champion."""
    registry = open_registry(settings)
    version = registry.version_of("champion") if registry else None
    if version is None or any(name not in reference.columns for name in features):
        return None
    model = registry.load_model(version)
    return pd.Series(model.predict_proba(reference[features])[:, 1], index=reference.index)


def with_reference_scores(reference: pd.DataFrame, settings: Settings, features: list[str]
                          ) -> pd.DataFrame:
    if PREDICTION_COLUMN in reference.columns or not features:
        return reference
    scores = champion_scores(settings, reference, features)
    return reference if scores is None else reference.assign(**{PREDICTION_COLUMN: scores})


def report_name(end: datetime) -> str:
    return f"drift/drift-{end:%Y%m%dT%H%M%S}.html"


def write_summary_html(summary: DriftSummary, path: Path) -> None:
    """The fast path's own report: one row per column (Evidently writes its own HTML)."""
    table = pd.DataFrame({name: asdict(col) for name, col in summary.result.columns.items()}).T
    notes = "".join(f"<p>{note}</p>" for note in summary.notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body><h1>Drift report ({summary.rows} rows, per-column tests)</h1>"
                    f"<p>drift share {summary.result.drift_share:.3f}</p>{notes}"
                    f"{table.to_html()}</body></html>")


def drift_metadata(summary: DriftSummary, log_stats: dict, start: datetime, end: datetime,
                   reference_rows: int, html: Path | None, url: str | None = None) -> dict:
    metadata = {"status": summary.status, "rows": summary.rows, "reference_rows": reference_rows,
                "bad_lines": int(log_stats.get("bad_lines", 0)),
                "window_start": start.isoformat(), "window_end": end.isoformat(),
                "missing_in_reference": dg.MetadataValue.json(summary.missing_in_reference),
                "missing_in_reference_count": len(summary.missing_in_reference),
                "notes": "\n".join(summary.notes)}
    if summary.result is not None:
        result = summary.result
        metadata.update({
            "method": result.method, "drift_share": result.drift_share,
            "drifted_columns": dg.MetadataValue.json(result.drifted_columns),
            "drifted_count": len(result.drifted_columns), "columns_compared": len(result.columns),
            "column_scores": dg.MetadataValue.json({n: asdict(c) for n, c in result.columns.items()}),
        })
    if html is not None:  # a published report is linked by its URL (the local file is a run's scratch)
        published = url is not None and not url.startswith("file:")
        metadata["report"] = dg.MetadataValue.url(url) if published else dg.MetadataValue.path(str(html))
        metadata["report_url"] = dg.MetadataValue.url(url or html.as_uri())
    return metadata


@dg.asset(group_name="drift", ins={"training_set": dg.AssetIn()}, deps=[prediction_log],
          code_version="1")
def drift_report(context: dg.AssetExecutionContext, config: DriftConfig,
                 settings: dg.ResourceParam[Settings], monitoring: dg.ResourceParam[LocalMonitoring],
                 training_set: pd.DataFrame) -> dg.MaterializeResult:
    """Evidently data drift (plus prediction drift) of recent traffic vs the training set."""
    start, end = window_bounds(config.window_hours, config.window_end)
    traffic, log_stats = read_prediction_log(monitoring, start, end, with_labels=False)
    features = feature_columns(traffic)
    reference = training_set
    if config.score_reference and len(traffic) >= config.min_rows:
        reference = with_reference_scores(training_set, settings, features)
    html = monitoring.report_path(report_name(end))
    summary = detect_drift(
        traffic, reference, [*features, PREDICTION_COLUMN], min_rows=config.min_rows,
        fast_path_min_rows=config.fast_path_min_rows, threshold=config.column_threshold,
        alpha=config.alpha, prediction_column=PREDICTION_COLUMN, html_path=html,
        cache_dir=settings.reports_dir.parent / "drift" / "profiles")
    if summary.result is not None and summary.result.method == "fast":
        write_summary_html(summary, html)
    if summary.result is not None:
        monitoring.set_gauges(drift_share=summary.result.drift_share,
                              drifted_columns=len(summary.result.drifted_columns))
    context.log.info("drift %s: %s", summary.status, "; ".join(summary.notes) or "no notes")
    url = monitoring.publish_report(html) if html.exists() else None
    return dg.MaterializeResult(metadata=drift_metadata(
        summary, log_stats, start, end, len(training_set), html if html.exists() else None, url))
