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


def is_packaged(source: str) -> bool:
    """``sklearn:<name>``: a table that ships inside an installed package (nothing downloaded)."""
    return source.startswith("sklearn:")
