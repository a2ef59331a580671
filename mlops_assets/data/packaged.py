"""Tables that ship inside an installed package (``source: sklearn:<name>`` in a dataset config),
shaped like any other source: an entity id, an event timestamp, snake_case feature names, a 0/1 target.
Nothing is downloaded at run time."""

from __future__ import annotations

import re

import pandas as pd

from .spec import DatasetSpecError

START = pd.Timestamp("2025-01-01", tz="UTC")


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def breast_cancer() -> pd.DataFrame:
    """scikit-learn's Wisconsin breast cancer table (569 rows, 30 numeric features): one row per
    patient, ``malignant`` = 1 for a malignant tumour, one examination every 6 hours from 2025-01-01."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.rename(columns=_snake)
    frame.insert(0, "patient_id", range(1, len(frame) + 1))
    frame.insert(1, "event_timestamp", START + pd.to_timedelta(6 * frame.index, unit="h"))
    frame["malignant"] = (data.target == 0).astype("int64")  # sklearn: 0 = malignant
    return frame


PACKAGED = {"sklearn:breast_cancer": breast_cancer}


def packaged_table(source: str) -> pd.DataFrame:
    if source not in PACKAGED:
        raise DatasetSpecError(f"unknown packaged dataset {source!r}; choose one of {', '.join(PACKAGED)}")
    return PACKAGED[source]()
