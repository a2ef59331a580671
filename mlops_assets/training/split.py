"""Splitting the point-in-time frame into a training frame and the holdout, with the guards that
must fail a run before anything reaches the registry.

Strategies:

- ``time``: the most recent ``holdout_fraction`` of the rows (by timestamp) is held out;
- ``stratified_time``: the most recent ``holdout_fraction`` of *each class* is held out, so both
  classes are in the holdout whenever the data has them (for labels that cluster in time);
- ``random``: a seeded random ``holdout_fraction`` of the rows.

Whatever the strategy, each side must have at least ``min_class_count`` rows of each class, or the
split fails with the dataset version, the strategy and the class counts of both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops_assets.data.spec import DatasetSpec

MIN_ROWS_PER_SIDE = 50
STRATEGIES = ("time", "stratified_time", "random")
LABELS = (0, 1)


class TrainingDataError(ValueError):
    """The frame cannot train or gate a model; the message says why."""


@dataclass(frozen=True)
class SplitPlan:
    strategy: str = "time"
    holdout_fraction: float = 0.2
    seed: int = 0
    min_class_count: int = 10  # of each class on each side: fewer and the holdout metrics mean nothing

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise TrainingDataError(f"split strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not 0 < self.holdout_fraction < 1:
            raise TrainingDataError(f"holdout_fraction={self.holdout_fraction} must be between 0 and 1")
        if self.min_class_count < 1:
            raise TrainingDataError(f"min_class_count={self.min_class_count} must be at least 1")

    def params(self) -> dict[str, object]:
        """The plan as flat parameters (MLflow params, Dagster metadata)."""
        params: dict[str, object] = {"split.strategy": self.strategy,
                                     "split.holdout_fraction": self.holdout_fraction,
                                     "split.min_class_count": self.min_class_count}
        if self.strategy == "random":
            params["split.seed"] = self.seed
        return params


def class_counts(frame: pd.DataFrame, spec: DatasetSpec) -> dict[str, int]:
    counts = frame[spec.target].value_counts()
    return {f"class_{label}": int(counts.get(label, 0)) for label in LABELS}


def check_trainable(frame: pd.DataFrame, spec: DatasetSpec) -> None:
    target = frame[spec.target]
    if target.isna().any():
        raise TrainingDataError(f"target column {spec.target} has {int(target.isna().sum())} missing values")
    others = sorted(set(target.unique().tolist()) - set(LABELS))
    if others:
        raise TrainingDataError(f"target column {spec.target} must be 0/1; it also holds {others[:5]}")
    classes = sorted(target.unique().tolist())
    if len(classes) < 2:
        raise TrainingDataError(f"target column {spec.target} has a single class {classes}: nothing to learn")


def split(frame: pd.DataFrame, spec: DatasetSpec, plan: SplitPlan, dataset_md5: str = "unknown"
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, holdout) by ``plan``; TrainingDataError if either side cannot train or gate."""
    plan.validate()
    check_trainable(frame, spec)
    ordered = frame.sort_values([spec.timestamp, spec.entity], kind="stable").reset_index(drop=True)
    held = _holdout_mask(ordered, spec, plan)
    train, holdout = ordered[~held].reset_index(drop=True), ordered[held].reset_index(drop=True)
    for name, part in (("training", train), ("holdout", holdout)):
        if len(part) < MIN_ROWS_PER_SIDE:
            raise TrainingDataError(
                f"dataset {dataset_md5}, split {plan.strategy}: {len(frame)} rows give {len(part)} {name} rows "
                f"(at least {MIN_ROWS_PER_SIDE} needed)")
    sides = {"training": class_counts(train, spec), "holdout": class_counts(holdout, spec)}
    short = [f"{side} {label}" for side, counts in sides.items() for label, n in counts.items()
             if n < plan.min_class_count]
    if short:
        detail = "; ".join(f"{side}: " + ", ".join(f"{k}={v}" for k, v in c.items()) for side, c in sides.items())
        hint = " (try strategy stratified_time or random)" if plan.strategy == "time" else ""
        raise TrainingDataError(
            f"dataset {dataset_md5}, split {plan.strategy} (holdout_fraction {plan.holdout_fraction}): "
            f"fewer than {plan.min_class_count} rows of {', '.join(short)}; class counts {detail}{hint}")
    return train, holdout


def _holdout_mask(ordered: pd.DataFrame, spec: DatasetSpec, plan: SplitPlan) -> np.ndarray:
    n = len(ordered)
    if plan.strategy == "random":
        chosen = np.random.default_rng(plan.seed).permutation(n)[: int(round(n * plan.holdout_fraction))]
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        return mask
    if plan.strategy == "time":
        if n == 0:
            return np.zeros(0, dtype=bool)
        # rows sharing the cut's timestamp all go to the holdout: no instant is on both sides
        cut = ordered[spec.timestamp].iloc[min(n - 1, int(n * (1 - plan.holdout_fraction)))]
        return (ordered[spec.timestamp] >= cut).to_numpy()
    mask = np.zeros(n, dtype=bool)  # stratified_time: the most recent rows of each class
    for _, rows in ordered.groupby(spec.target, sort=False).groups.items():
        positions = np.sort(ordered.index.get_indexer(rows))
        take = int(round(len(positions) * plan.holdout_fraction))
        if take:
            mask[positions[-take:]] = True
    return mask


def split_by_time(frame: pd.DataFrame, spec: DatasetSpec, holdout_fraction: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``time`` strategy (kept for callers that only need it)."""
    return split(frame, spec, SplitPlan(holdout_fraction=holdout_fraction))
