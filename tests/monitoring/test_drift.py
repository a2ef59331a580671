from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlops_assets.data.generator import production_window
from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.drift import compute
from mlops_assets.drift.compute import (build_profile, detect_drift, evidently_drift, fast_drift,
                                        load_or_build_profile)

FEATURES = DEMO_SPEC.features
PRICE_COLUMNS = ["monthly_charges", "total_charges", "support_calls"]  # in feature order


@pytest.fixture(scope="module")
def windows():
    return {scenario: production_window(3_000, seed=11, scenario=scenario)
            for scenario in ("baseline", "price_rise")}


@pytest.fixture(scope="module")
def evidently_results(windows, reference):
    return {name: evidently_drift(frame, reference, FEATURES) for name, frame in windows.items()}


@pytest.fixture(scope="module")
def fast_results(windows, reference):
    profile = build_profile(reference[FEATURES])
    return {name: fast_drift(frame, profile, FEATURES) for name, frame in windows.items()}


def test_baseline_against_baseline_is_no_drift(evidently_results, fast_results):
    for result in (evidently_results["baseline"], fast_results["baseline"]):
        assert result.drifted_columns == [] and result.drift_share == 0.0
        assert len(result.columns) == len(FEATURES)


def test_price_rise_drifts_the_charges(evidently_results, fast_results):
    for result in (evidently_results["price_rise"], fast_results["price_rise"]):
        assert result.drifted_columns == PRICE_COLUMNS
        assert result.drift_share == pytest.approx(len(PRICE_COLUMNS) / 9)
    assert fast_results["price_rise"].columns["monthly_charges"].p_value < 1e-12


def test_fast_path_and_evidently_agree_column_by_column(evidently_results, fast_results):
    for scenario in ("baseline", "price_rise"):
        ev, fast = evidently_results[scenario].columns, fast_results[scenario].columns
        assert {n: c.drifted for n, c in ev.items()} == {n: c.drifted for n, c in fast.items()}
        assert {n: c.kind for n, c in ev.items()} == {n: c.kind for n, c in fast.items()}
        for name in FEATURES:  # the same effect size, up to binning
            assert fast[name].score == pytest.approx(ev[name].score, rel=0.15, abs=0.01), name


def test_grid_statistics_stay_within_their_stated_bounds(reference, windows):
    ref = reference["total_charges"].to_numpy(float)
    cur = windows["price_rise"]["total_charges"].to_numpy(float)
    profile = build_profile(reference[["total_charges"]])
    column = fast_drift(windows["price_rise"], profile, ["total_charges"]).columns["total_charges"]
    exact = stats.ks_2samp(ref, cur)
    wasserstein = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert column.score == pytest.approx(wasserstein, rel=0.01)
    assert column.p_value <= 1e-6 and exact.pvalue <= 1e-6
    # KS on the profile's grid: never above the exact statistic, at most one quantile step below.
    grid_ks = _grid_ks(profile.numeric["total_charges"], cur)
    assert exact.statistic - 1 / compute.QUANTILES - 1e-9 <= grid_ks <= exact.statistic + 1e-9


def _grid_ks(ref_profile, current):
    current = np.sort(current)
    cdf = np.searchsorted(current, ref_profile["grid"], side="right") / len(current)
    return float(np.max(np.abs(cdf - np.asarray(ref_profile["cdf"]))))


def test_window_size_chooses_the_path(reference, windows, tmp_path):
    common = dict(columns=FEATURES, min_rows=100, fast_path_min_rows=2_000)
    small = detect_drift(windows["price_rise"].head(1_000), reference, **common,
                         html_path=tmp_path / "small.html")
    large = detect_drift(windows["price_rise"], reference, **common, cache_dir=tmp_path / "profiles")
    assert (small.status, small.result.method) == ("ok", "evidently")
    html = (tmp_path / "small.html").read_text()
    assert "<!DOCTYPE html>" in html and "monthly_charges" in html
    assert (large.status, large.result.method) == ("ok", "fast")
    assert small.result.drifted_columns == large.result.drifted_columns == PRICE_COLUMNS
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1


def test_too_little_traffic_is_insufficient_data_not_no_drift(reference, windows):
    summary = detect_drift(windows["price_rise"].head(50), reference, FEATURES, min_rows=200)
    assert summary.status == "insufficient_data" and summary.result is None
    assert "50 rows in the window, fewer than the 200 needed" in summary.notes


def test_reference_missing_a_traffic_column_is_named_not_a_crash(reference, windows):
    partial = reference.drop(columns=["data_usage_gb"])
    summary = detect_drift(windows["price_rise"].head(1_000), partial, [*FEATURES, "score"],
                           min_rows=100, fast_path_min_rows=500)
    assert summary.status == "ok"
    assert summary.missing_in_reference == ["data_usage_gb"]
    assert "data_usage_gb" not in summary.result.columns and len(summary.result.columns) == 8
    assert summary.result.drifted_columns == PRICE_COLUMNS
    assert any("prediction drift skipped" in note for note in summary.notes)


def test_profile_is_cached_by_the_reference_content(reference, tmp_path):
    first = load_or_build_profile(reference[FEATURES], tmp_path)
    compute._PROFILE_CACHE.clear()
    from_disk = load_or_build_profile(reference[FEATURES], tmp_path)
    assert from_disk.reference_hash == first.reference_hash
    assert from_disk.numeric["monthly_charges"]["cdf"] == first.numeric["monthly_charges"]["cdf"]
    changed = reference[FEATURES].assign(monthly_charges=reference["monthly_charges"] + 1)
    assert load_or_build_profile(changed, tmp_path).reference_hash != first.reference_hash
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_unseen_category_in_traffic_drifts_that_column(reference):
    window = production_window(2_000, seed=5, scenario="baseline")
    window.loc[: len(window) // 2, "payment_method"] = "crypto"
    profile = build_profile(reference[FEATURES])
    result = fast_drift(window, profile, FEATURES)
    assert result.drifted_columns == ["payment_method"]
