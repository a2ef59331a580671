"""Production feedback as training data: logged predictions whose labels have arrived.

Retraining after drift must see the world that drifted; these rows are that world, with the
features exactly as they were served.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from .spec import DatasetSpec

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def labelled_feedback(monitoring, spec: DatasetSpec) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows shaped like the dataset from every labelled prediction with an entity id."""
    from mlops_assets.monitoring.prediction_log import LABEL_COLUMN, read_prediction_log

    log, stats = read_prediction_log(monitoring, EPOCH, datetime.now(timezone.utc) + pd.Timedelta(hours=1))
    usable = log[log[LABEL_COLUMN].notna() & log["entity_id"].notna()] if len(log) else log
    usable = usable.dropna(subset=[c for c in spec.features if c in usable.columns])
    counts = {"feedback_rows": len(log), "feedback_labelled": int(stats.get("labelled", 0)),
              "feedback_used": len(usable), "feedback_bad_lines": int(stats.get("bad_lines", 0))}
    if usable.empty or any(column not in usable.columns for column in spec.features):
        return pd.DataFrame(columns=spec.columns), {**counts, "feedback_used": 0}
    frame = pd.DataFrame({
        spec.entity: usable["entity_id"].astype("int64").to_numpy(),
        spec.timestamp: pd.to_datetime(usable["ts"], utc=True).astype("datetime64[ns, UTC]").to_numpy(),
        **{column: usable[column].to_numpy() for column in spec.features},
        spec.target: usable[LABEL_COLUMN].astype("int64").to_numpy(),
    })
    for column in spec.numeric:
        frame[column] = frame[column].astype("int64" if column in spec.integer else "float64")
    # The same entity at the same instant twice (a retried request) counts once.
    return frame.drop_duplicates([spec.entity, spec.timestamp], keep="last").reset_index(drop=True), counts
