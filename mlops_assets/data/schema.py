"""The schema gate on `dataset`: pandera validation summarised per column and rule."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .spec import DatasetSpec


@dataclass(frozen=True)
class SchemaViolation:
    column: str
    rule: str
    rows: int

    def __str__(self) -> str:
        return f"{self.column}: {self.rule} ({self.rows} row{'s' if self.rows != 1 else ''})"


def _expected_dtype(spec: DatasetSpec, column: str) -> str:
    if column == spec.timestamp:
        return "datetime64[ns, UTC]"
    if column in (spec.entity, spec.target) or column in spec.integer:
        return "int64"
    if column in spec.categorical:
        return "object"
    return "float64"


def build_schema(spec: DatasetSpec):
    import pandera.pandas as pa

    keys = {spec.entity, spec.timestamp, spec.target}
    columns = {
        column: pa.Column(
            _expected_dtype(spec, column),
            nullable=column not in keys,
            checks=[pa.Check.isin([0, 1], name="label in {0,1}")] if column == spec.target else None,
        )
        for column in spec.columns
    }
    return pa.DataFrameSchema(columns, strict=True, unique=[spec.entity, spec.timestamp],
                              report_duplicates="all", name=spec.name)


def validate_dataset(frame: pd.DataFrame, spec: DatasetSpec) -> list[SchemaViolation]:
    """Every violation, as (column, rule, number of rows); empty when the table is valid."""
    import pandera.errors

    if frame.empty:
        return [SchemaViolation(column="<table>", rule="table is empty", rows=0)]
    try:
        build_schema(spec).validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as errors:
        return _summarise(errors.failure_cases, spec)
    return []


def _summarise(cases: pd.DataFrame, spec: DatasetSpec) -> list[SchemaViolation]:
    violations = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        column = column if isinstance(column, str) else spec.name
        rule = _describe(str(check), group)
        rows = int(group["index"].nunique()) if group["index"].notna().any() else len(group)
        if rule.startswith(("missing column", "extra column")):
            column = str(group["failure_case"].iloc[0])
            rows = 0
        violations.append(SchemaViolation(column=column, rule=rule, rows=rows))
    return violations


def _describe(check: str, group: pd.DataFrame) -> str:
    if check == "column_in_dataframe":
        return "missing column"
    if check == "column_in_schema":
        return "extra column"
    if check.startswith("dtype"):
        return f"wrong dtype: expected {check[len('dtype('):-1]}, got {group['failure_case'].iloc[0]}"
    if check == "not_nullable":
        return "null values"
    if check == "multiple_fields_uniqueness" or check == "field_uniqueness":
        return "duplicated (entity, timestamp) pair"
    return check
