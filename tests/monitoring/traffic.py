"""Prediction-log lines and labels built from the churn generator, as the transformer writes them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.monitoring.prediction_log import labels_dir
from mlops_assets.settings import Settings

WINDOW_END = datetime.fromisoformat("2026-05-01T12:00:00+00:00")


def churn_score(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model: informative about the label, and moved by monthly charges."""
    logit = 1.6 * frame[DEMO_SPEC.target] - 0.8 + 0.01 * (frame["monthly_charges"] - 70)
    noise = np.random.default_rng(0).normal(0, 0.9, len(frame))
    return 1 / (1 + np.exp(-(logit + noise)))


def log_records(frame: pd.DataFrame, end: datetime = WINDOW_END, hours: float = 6,
                model_version: str = "1", prefix: str = "r") -> list[dict]:
    """One record per row, spread evenly over the ``hours`` before ``end``."""
    scores = churn_score(frame)
    step = timedelta(hours=hours) / max(len(frame), 1)
    features = frame[DEMO_SPEC.features].to_dict("records")
    return [{"request_id": f"{prefix}{i}", "ts": (end - (i + 1) * step).isoformat(),
             "entity_id": int(entity), "features": feats, "score": float(score),
             "prediction": int(score >= 0.5), "model_version": model_version, "revision": "stable"}
            for i, (entity, feats, score) in enumerate(zip(frame[DEMO_SPEC.entity], features, scores))]


def write_log(settings: Settings, records: list[dict], extra_lines: tuple[str, ...] = ()) -> list[Path]:
    """Append records to hourly files named by their timestamp; extra raw lines go to the last file."""
    settings.prediction_log_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for record in records:
        hour = datetime.fromisoformat(record["ts"]).strftime("%Y%m%d%H")
        path = paths.setdefault(hour, settings.prediction_log_dir / f"predictions-{hour}.jsonl")
        with path.open("a") as out:
            out.write(json.dumps(record) + "\n")
    last = sorted(paths.values())[-1] if paths else settings.prediction_log_dir / "predictions-2026050100.jsonl"
    with last.open("a") as out:
        out.writelines(line + "\n" for line in extra_lines)
    return sorted(paths.values())


def write_labels(settings: Settings, labels: dict[str, int], name: str = "labels-1.jsonl",
                 extra_lines: tuple[str, ...] = ()) -> Path:
    folder = labels_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    lines = [json.dumps({"request_id": rid, "label": label}) for rid, label in labels.items()]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path
