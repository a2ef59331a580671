"""Time-based split into a training frame and the fixed holdout window, with the guards that must
fail a run before anything reaches the registry."""

from __future__ import annotations

import pandas as pd

from mlops_assets.data.spec import DatasetSpec

MIN_ROWS_PER_SIDE = 50


class TrainingDataError(ValueError):
    """The frame cannot train a model; the message says why."""


def check_trainable(frame: pd.DataFrame, spec: DatasetSpec) -> None:
    target = frame[spec.target]
    if target.isna().any():
        raise TrainingDataError(f"target column {spec.target} has {int(target.isna().sum())} missing values")
    classes = sorted(target.unique().tolist())
    if len(classes) < 2:
        raise TrainingDataError(f"target column {spec.target} has a single class {classes}: nothing to learn")


def split_by_time(frame: pd.DataFrame, spec: DatasetSpec, holdout_fraction: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Older rows train; the most recent ``holdout_fraction`` of the time range's rows is held out."""
    if not 0 < holdout_fraction < 1:
        raise TrainingDataError(f"holdout_fraction={holdout_fraction} must be between 0 and 1")
    check_trainable(frame, spec)
    ordered = frame.sort_values([spec.timestamp, spec.entity], kind="stable").reset_index(drop=True)
    cut = ordered[spec.timestamp].iloc[int(len(ordered) * (1 - holdout_fraction))] if len(ordered) else None
    train = ordered[ordered[spec.timestamp] < cut] if cut is not None else ordered
    holdout = ordered[ordered[spec.timestamp] >= cut] if cut is not None else ordered
    for name, part in (("training", train), ("holdout", holdout)):
        if len(part) < MIN_ROWS_PER_SIDE:
            raise TrainingDataError(
                f"too few rows for the split: {len(frame)} rows give {len(part)} {name} rows "
                f"(at least {MIN_ROWS_PER_SIDE} needed)")
    check_trainable(train, spec)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)
