"""Where the raw table comes from: the demo generator, a table shipped in a package, or a
bring-your-own CSV/Parquet file; and reading a dataset config (checked against the source's header)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .packaged import packaged_table
import yaml

from .spec import DatasetSpec, DatasetSpecError, is_packaged


def read_source(spec: DatasetSpec) -> pd.DataFrame:
    """Read a bring-your-own file and normalise what is safe to normalise (timestamps to UTC,
    whole-number floats stay floats); everything else is left for the schema gate to judge."""
    if is_packaged(spec.source):
        # a packaged table offers more columns than a model may use: the spec picks its own
        return normalise(_with_columns(packaged_table(spec.source), spec, spec.source)[spec.columns], spec)
    path = Path(spec.source)
    if not path.exists():
        raise DatasetSpecError(f"dataset file {path} does not exist")
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise DatasetSpecError(f"cannot read dataset file {path}: {exc}") from exc
    return normalise(_with_columns(frame, spec, path.name), spec)


def _with_columns(frame: pd.DataFrame, spec: DatasetSpec, name: str) -> pd.DataFrame:
    absent = [column for column in spec.columns if column not in frame.columns]
    if absent:
        raise DatasetSpecError(
            f"dataset config names column(s) {', '.join(absent)} that {name} does not have "
            f"(it has: {', '.join(map(str, frame.columns))})")
    return frame


def source_columns(spec: DatasetSpec) -> list[str] | None:
    """The source's column names from its header (None if the file is not there yet)."""
    if is_packaged(spec.source):
        return list(packaged_table(spec.source).columns)
    path = Path(spec.source)
    if not path.exists():
        return None
    try:
        if path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise DatasetSpecError(f"cannot read dataset file {path}: {exc}") from exc


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


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a bring-your-own dataset config (YAML); relative `source` paths are relative to it."""
    path = Path(path)
    raw = read_yaml(path, DatasetSpecError, f"dataset config {path}")
    return load_spec_mapping(raw, base=path.parent, where=f"dataset config {path}")


def read_yaml(path: Path, error: type[ValueError], label: str):
    """A YAML file's content, or ``error`` naming ``label`` (unreadable, or not YAML)."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {label}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{label} is not valid YAML: {exc}") from exc


def load_spec_mapping(raw, base: Path, where: str) -> DatasetSpec:
    """A dataset config already parsed (a BYO file, or a model spec's ``dataset:``); ``where`` names it
    in errors. The source must have every declared column (checked on its header only)."""
    if not isinstance(raw, dict):
        raise DatasetSpecError(f"{where} must be a mapping")
    required = ("source", "entity", "timestamp", "target")
    missing = [key for key in required if not raw.get(key)]
    if missing or not (raw.get("numeric") or raw.get("categorical")):
        missing += [] if (raw.get("numeric") or raw.get("categorical")) else ["numeric/categorical"]
        raise DatasetSpecError(f"{where} is missing: {', '.join(missing)}")
    source = str(raw["source"])
    if not is_packaged(source):
        path = Path(source)
        source = str(path if path.is_absolute() else (base / path).resolve())
    spec = DatasetSpec(
        name=str(raw.get("name") or Path(source.split(":")[-1]).stem),
        entity=raw["entity"], timestamp=raw["timestamp"], target=raw["target"],
        numeric=tuple(raw.get("numeric") or ()), categorical=tuple(raw.get("categorical") or ()),
        integer=tuple(raw.get("integer") or ()), source=source,
    )
    check_columns(spec, where)
    return spec


def check_columns(spec: DatasetSpec, where: str) -> None:
    """Every declared column exists in the source (header only; a missing file is judged at run time)."""
    columns = source_columns(spec)
    if columns is None:
        return
    for field_name in ("entity", "timestamp", "target", "numeric", "categorical"):
        declared = getattr(spec, field_name)
        for column in ([declared] if isinstance(declared, str) else declared):
            if column not in columns:
                raise DatasetSpecError(f"{where}: {field_name}: column {column!r} is not in {spec.source} "
                                       f"(it has: {', '.join(map(str, columns))})")
