"""Drift-report time and peak memory: Evidently's DataDriftPreset vs the per-column fast path.

Each (method, size) case runs in its own child process, so its peak RSS is its own: the child
reports ``ru_maxrss`` before the drift call (data and imports) and after it. Traffic is the
generator's ``price_rise`` scenario (monthly and total charges drift) with extra undrifted numeric
columns to reach 20 columns; the reference is 100k baseline rows with the same columns.

    .venv/bin/python benchmarks/drift_benchmark.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "drift.json"
REFERENCE_ROWS = 100_000
TOTAL_COLUMNS = 20
METHODS = ("evidently", "fast")
EXPECTED_DRIFTED = ["monthly_charges", "total_charges"]


def frame(n_rows: int, scenario: str, seed: int) -> pd.DataFrame:
    from mlops_assets.data.generator import generate_churn, production_window
    from mlops_assets.data.spec import DEMO_SPEC

    base = (generate_churn(n_rows, seed=seed) if scenario == "reference"
            else production_window(n_rows, seed=seed, scenario=scenario))[DEMO_SPEC.features]
    rng = np.random.default_rng(seed + 1)
    extra = {f"extra_{i}": rng.normal(i, 1 + i / 10, n_rows) for i in range(TOTAL_COLUMNS - base.shape[1])}
    return base.assign(**extra)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(method: str, n_rows: int) -> dict:
    """In the child: build the data, time one drift computation, report the numbers as JSON."""
    from mlops_assets.drift.compute import build_profile, evidently_drift, fast_drift

    reference = frame(REFERENCE_ROWS, "reference", seed=7)
    current = frame(n_rows, "price_rise", seed=3)
    columns = list(current.columns)
    case = {"method": method, "rows": n_rows, "columns": len(columns), "reference_rows": len(reference)}
    if method == "fast":
        started = time.perf_counter()
        profile = build_profile(reference)  # once per reference, cached by its hash in the asset
        case["profile_seconds"] = time.perf_counter() - started
    # Import time is not report time.
    import scipy.stats  # noqa: F401
    if method == "evidently":
        import evidently.presets  # noqa: F401
    case["rss_before_mb"] = max_rss_mb()
    started = time.perf_counter()
    result = (fast_drift(current, profile, columns) if method == "fast"
              else evidently_drift(current, reference, columns))
    case["seconds"] = time.perf_counter() - started
    case["peak_rss_mb"] = max_rss_mb()
    case["drifted_columns"] = result.drifted_columns
    return case


def run_in_child(method: str, n_rows: int) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--case", method, str(n_rows)],
                               capture_output=True, text=True, cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"case {method} {n_rows} failed:\n{completed.stderr[-2000:]}")
    case = json.loads(completed.stdout.strip().splitlines()[-1])
    # Cross-check: the largest child so far, as the kernel accounts it.
    case["children_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return case


def table(cases: list[dict]) -> str:
    by_key = {(c["method"], c["rows"]): c for c in cases}
    lines = [f"{'rows':>9} | {'evidently s':>11} {'MB':>6} | {'fast s':>7} {'MB':>6} | "
             f"{'time x':>7} {'mem x':>6} | drifted (evidently / fast)"]
    for rows in sorted({c["rows"] for c in cases}):
        ev, fast = by_key.get(("evidently", rows)), by_key.get(("fast", rows))
        cells = [f"{rows:>9}"]
        cells.append(f"{ev['seconds']:>11.2f} {ev['peak_rss_mb']:>6.0f}" if ev else f"{'-':>11} {'-':>6}")
        cells.append(f"{fast['seconds']:>7.2f} {fast['peak_rss_mb']:>6.0f}" if fast else f"{'-':>7} {'-':>6}")
        if ev and fast:
            cells.append(f"{ev['seconds'] / fast['seconds']:>7.1f} {ev['peak_rss_mb'] / fast['peak_rss_mb']:>6.1f}")
        else:
            cells.append(f"{'-':>7} {'-':>6}")
        drifted = " / ".join(",".join(c["drifted_columns"]) if c else "-" for c in (ev, fast))
        lines.append(" | ".join(cells) + f" | {drifted}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated traffic row counts")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--case", nargs=2, metavar=("METHOD", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]))))
        return
    cases = [run_in_child(method, int(size)) for size in args.sizes.split(",")
             for method in args.methods.split(",")]
    for case in cases:
        case["missed_drift"] = sorted(set(EXPECTED_DRIFTED) - set(case["drifted_columns"]))
    print(table(cases))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"reference_rows": REFERENCE_ROWS, "columns": TOTAL_COLUMNS,
                                   "cases": cases}, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
