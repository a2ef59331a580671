"""Drift of recent traffic against the training reference: Evidently for small windows, a fast
per-column path for large ones.

Both paths decide with the same rule so they flag the same columns: a column drifts when its
effect size reaches ``threshold`` (normalised Wasserstein distance for numeric columns,
Jensen-Shannon distance for categorical ones; Evidently's defaults above 1,000 reference rows).
The fast path also runs a two-sample test (KS, chi²) and requires ``p < alpha``; on a million rows
every negligible shift is "significant", so the p-value alone would flag noise.

The fast path never touches the raw reference again: it keeps a profile (1,000 quantiles and the
exact reference CDF at them per numeric column, counts per category) computed once per reference
and cached by the reference's content hash. The grid KS statistic underestimates the exact one
by at most one quantile step (1/1,000) for continuous columns and is exact for discrete ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.atomic import atomic_write_text
from mlops_assets.monitoring.prediction_log import frame_hash

QUANTILES = 1000
INTEGER_CARDINALITY_LIMIT = 10  # Evidently: integer columns with <= 10 values are categorical
FEW_VALUES_LIMIT = 5  # Evidently: numeric columns with <= 5 values are compared as categories
PROFILE_VERSION = 1
PROFILES_IN_MEMORY = 4
_PROFILE_CACHE: dict[str, "ReferenceProfile"] = {}


@dataclass(frozen=True)
class ColumnDrift:
    kind: str  # numeric | categorical
    method: str
    score: float  # the effect size the decision thresholds
    threshold: float
    drifted: bool
    p_value: float | None = None


@dataclass
class DriftResult:
    method: str  # evidently | fast
    columns: dict[str, ColumnDrift]

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, col in self.columns.items() if col.drifted]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0


@dataclass
class ReferenceProfile:
    reference_hash: str
    n_rows: int
    numeric: dict[str, dict] = field(default_factory=dict)
    categorical: dict[str, dict] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


# --- column kinds -------------------------------------------------------------------------------

def column_kind(series: pd.Series) -> str:
    """'numeric' or 'categorical', as Evidently infers it, so both paths compare alike."""
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "categorical"
    n_unique = series.nunique()
    if pd.api.types.is_integer_dtype(series) and n_unique <= INTEGER_CARDINALITY_LIMIT:
        return "categorical"
    return "categorical" if n_unique <= FEW_VALUES_LIMIT else "numeric"


def _category_keys(series: pd.Series) -> pd.Series:
    """Category labels as strings; 3 and 3.0 are one category (JSON may turn ints into floats)."""
    values = series.dropna()
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    return values.astype(str)


# --- reference profile --------------------------------------------------------------------------

def _numeric_profile(values: np.ndarray) -> dict:
    ordered = np.sort(values[~np.isnan(values)])
    grid = np.unique(ordered[_quantile_index(len(ordered))])
    cdf = np.searchsorted(ordered, grid, side="right") / len(ordered)
    return {"n": len(ordered), "std": float(np.std(ordered)),
            "quantiles": ordered[_quantile_index(len(ordered))].tolist(),
            "grid": grid.tolist(), "cdf": cdf.tolist()}


def _quantile_index(n: int) -> np.ndarray:
    """Positions of the mid-point quantiles (j + 0.5) / QUANTILES in a sorted array of n values."""
    levels = (np.arange(QUANTILES) + 0.5) / QUANTILES
    return np.minimum((levels * n).astype(np.int64), n - 1)


def build_profile(reference: pd.DataFrame, columns: list[str] | None = None) -> ReferenceProfile:
    profile = ReferenceProfile(frame_hash(reference), len(reference))
    for name in columns or list(reference.columns):
        series = reference[name]
        if series.notna().sum() == 0:
            continue
        if column_kind(series) == "numeric":
            profile.numeric[name] = _numeric_profile(series.to_numpy(dtype=float))
        else:
            counts = _category_keys(series).value_counts()
            profile.categorical[name] = {"n": int(counts.sum()), "counts": counts.to_dict()}
    return profile


def load_or_build_profile(reference: pd.DataFrame, cache_dir: Path | None = None) -> ReferenceProfile:
    """The reference's profile, from memory, then ``cache_dir``, else computed and cached."""
    key = f"{frame_hash(reference)}-v{PROFILE_VERSION}"
    if key in _PROFILE_CACHE:
        return _PROFILE_CACHE[key]
    path = cache_dir / f"{key}.json" if cache_dir else None
    if path and path.exists():
        profile = ReferenceProfile(**json.loads(path.read_text()))
    else:
        profile = build_profile(reference)
        if path:
            atomic_write_text(path, json.dumps(asdict(profile)))
    if len(_PROFILE_CACHE) >= PROFILES_IN_MEMORY:
        _PROFILE_CACHE.pop(next(iter(_PROFILE_CACHE)))  # oldest first
    _PROFILE_CACHE[key] = profile
    return profile


# --- fast path ----------------------------------------------------------------------------------

def fast_drift(current: pd.DataFrame, profile: ReferenceProfile, columns: list[str],
               threshold: float = 0.1, alpha: float = 0.05) -> DriftResult:
    result = {}
    for name in columns:
        if name in profile.numeric:
            result[name] = _numeric_drift(current[name], profile.numeric[name], threshold, alpha)
        elif name in profile.categorical:
            result[name] = _categorical_drift(current[name], profile.categorical[name],
                                              threshold, alpha)
    return DriftResult("fast", result)


def _numeric_drift(series: pd.Series, ref: dict, threshold: float, alpha: float) -> ColumnDrift:
    from scipy import stats

    values = series.to_numpy(dtype=float)
    current = np.sort(values[~np.isnan(values)])
    n = len(current)
    ks = float(np.max(np.abs(np.searchsorted(current, ref["grid"], side="right") / n
                             - np.asarray(ref["cdf"]))))
    effective_n = round(ref["n"] * n / (ref["n"] + n))
    p_value = float(stats.kstwo.sf(ks, max(effective_n, 1)))
    # Wasserstein-1 = the mean gap between the two quantile functions.
    wasserstein = float(np.mean(np.abs(current[_quantile_index(n)] - np.asarray(ref["quantiles"]))))
    score = wasserstein / max(ref["std"], 0.001)
    return ColumnDrift("numeric", "ks+wasserstein_norm", score, threshold,
                       bool(p_value < alpha and score >= threshold), p_value)


def _categorical_drift(series: pd.Series, ref: dict, threshold: float, alpha: float) -> ColumnDrift:
    from scipy import stats
    from scipy.spatial import distance

    current = _category_keys(series).value_counts()
    keys = sorted(set(ref["counts"]) | set(current.index))
    table = np.array([[ref["counts"].get(k, 0) for k in keys], [current.get(k, 0) for k in keys]],
                     dtype=float)
    if len(keys) < 2:
        p_value = 1.0  # one category on both sides: nothing can have moved
    else:
        p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
    score = float(distance.jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum()))
    return ColumnDrift("categorical", "chi2+jensenshannon", score, threshold,
                       bool(p_value < alpha and score >= threshold), p_value)


# --- Evidently ----------------------------------------------------------------------------------

def evidently_drift(current: pd.DataFrame, reference: pd.DataFrame, columns: list[str],
                    threshold: float = 0.1, html_path: Path | None = None) -> DriftResult:
    """Evidently's DataDriftPreset over ``columns``; the HTML report goes to ``html_path``."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    # Pin the effect-size methods Evidently picks for references over 1,000 rows, so the decision
    # does not change with the reference size and matches the fast path.
    preset = DataDriftPreset(columns=columns, num_method="wasserstein", cat_method="jensenshannon",
                             threshold=threshold)
    snapshot = Report([preset], include_tests=True).run(
        current_data=current[columns], reference_data=reference[columns])
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    return DriftResult("evidently", _parse_snapshot(snapshot.dict(), reference))


def _parse_snapshot(report: dict, reference: pd.DataFrame) -> dict[str, ColumnDrift]:
    drifted = {test["metric_config"]["params"]["column"]: test["status"] == "FAIL"
               for test in report["tests"] if test.get("id") == "drift"}
    columns = {}
    for metric in report["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        name = config["column"]
        columns[name] = ColumnDrift(column_kind(reference[name]), config["method"],
                                    float(metric["value"]), float(config["threshold"]),
                                    drifted[name])
    return columns


# --- the decision the asset reports -------------------------------------------------------------

@dataclass
class DriftSummary:
    status: str  # ok | insufficient_data | no_common_columns
    rows: int
    result: DriftResult | None = None
    missing_in_reference: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def detect_drift(current: pd.DataFrame, reference: pd.DataFrame, columns: list[str], *,
                 min_rows: int = 200, fast_path_min_rows: int = 50_000, threshold: float = 0.1,
                 alpha: float = 0.05, prediction_column: str | None = "score",
                 html_path: Path | None = None, cache_dir: Path | None = None) -> DriftSummary:
    """Compare ``columns`` of traffic with the reference, choosing the path by window size.

    A column traffic has and the reference lacks is named in ``missing_in_reference`` and left out;
    the prediction column is compared only when the reference carries scores too.
    """
    summary = DriftSummary("ok", len(current))
    compared = [c for c in columns if c in reference.columns]
    lacking = [c for c in columns if c not in reference.columns]
    if prediction_column in lacking:
        lacking.remove(prediction_column)
        summary.notes.append(f"prediction drift skipped: the reference has no '{prediction_column}'"
                             " column (no reference scores)")
    summary.missing_in_reference = lacking
    if len(current) < min_rows:
        summary.status = "insufficient_data"
        summary.notes.append(f"{len(current)} rows in the window, fewer than the {min_rows} needed")
    elif not compared:
        summary.status = "no_common_columns"
        summary.notes.append("traffic and reference share no column")
    elif len(current) >= fast_path_min_rows:
        profile = load_or_build_profile(reference[compared], cache_dir)
        summary.result = fast_drift(current, profile, compared, threshold, alpha)
    else:
        summary.result = evidently_drift(current, reference, compared, threshold, html_path)
    return summary
