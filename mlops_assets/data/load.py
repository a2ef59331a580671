"""Where the raw table comes from: the demo generator or a bring-your-own CSV/Parquet file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .spec import DatasetSpec, DatasetSpecError


def read_source(spec: DatasetSpec) -> pd.DataFrame:
    """Read a bring-your-own file and normalise what is safe to normalise (timestamps to UTC,
    whole-number floats stay floats); everything else is left for the schema gate to judge."""
    path = Path(spec.source)
    if not path.exists():
        raise DatasetSpecError(f"dataset file {path} does not exist")
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise DatasetSpecError(f"cannot read dataset file {path}: {exc}") from exc
    absent = [column for column in spec.columns if column not in frame.columns]
    if absent:
        raise DatasetSpecError(
            f"dataset config names column(s) {', '.join(absent)} that {path.name} does not have "
            f"(it has: {', '.join(map(str, frame.columns))})")
    return normalise(frame, spec)


def normalise(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    frame = frame.copy()
    try:
        frame[spec.timestamp] = pd.to_datetime(frame[spec.timestamp], utc=True).astype("datetime64[ns, UTC]")
    except (ValueError, TypeError) as exc:
        raise DatasetSpecError(f"column {spec.timestamp} does not hold timestamps: {exc}") from exc
    for column in spec.numeric:
        if column not in spec.integer and pd.api.types.is_integer_dtype(frame[column]):
            frame[column] = frame[column].astype("float64")
    return frame
