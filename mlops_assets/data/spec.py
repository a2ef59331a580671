"""What a dataset looks like: entity, timestamp, target and feature columns.

The demo churn table and any bring-your-own dataset are described the same way, so the schema
check, the Feast definitions and training all read one spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


class DatasetSpecError(ValueError):
    """The dataset config is unreadable or names something that does not exist."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    entity: str
    timestamp: str
    target: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    source: str | None = None  # CSV or Parquet path; None means the demo generator
    integer: tuple[str, ...] = field(default=())  # numeric columns stored as integers

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        return [self.entity, self.timestamp, *self.features, self.target]


DEMO_SPEC = DatasetSpec(
    name="churn",
    entity="customer_id",
    timestamp="event_timestamp",
    target="churned",
    numeric=("tenure_months", "monthly_charges", "total_charges", "support_calls",
             "data_usage_gb", "num_products"),
    categorical=("contract", "payment_method", "internet_service"),
    integer=("tenure_months", "support_calls", "num_products"),
)


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a bring-your-own dataset config (YAML); relative `source` paths are relative to it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DatasetSpecError(f"cannot read dataset config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise DatasetSpecError(f"dataset config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DatasetSpecError(f"dataset config {path} must be a mapping")
    required = ("source", "entity", "timestamp", "target")
    missing = [key for key in required if not raw.get(key)]
    if missing or not (raw.get("numeric") or raw.get("categorical")):
        missing += [] if (raw.get("numeric") or raw.get("categorical")) else ["numeric/categorical"]
        raise DatasetSpecError(f"dataset config {path} is missing: {', '.join(missing)}")
    source = Path(raw["source"])
    if not source.is_absolute():
        source = (path.parent / source).resolve()
    return DatasetSpec(
        name=str(raw.get("name") or source.stem),
        entity=raw["entity"], timestamp=raw["timestamp"], target=raw["target"],
        numeric=tuple(raw.get("numeric") or ()), categorical=tuple(raw.get("categorical") or ()),
        integer=tuple(raw.get("integer") or ()), source=str(source),
    )
