"""The comparison gate on unchanged data: how many of N seeded retrains each policy promotes, and
what the gate costs.

A champion and N candidates are trained on the same demo data and split (a random forest, so the
seed changes the model); each candidate is judged against the champion on the same holdout by
every policy. On unchanged data there is nothing to gain, so `superiority` should promote almost
none and `non_inferiority` almost all; `plain` (tolerance 0) promotes whichever seed got lucky.
Timing: the vectorised paired bootstrap vs the same resamples through
``sklearn.metrics.roc_auc_score`` in a loop (the baseline, measured in the same run).

    .venv/bin/python benchmarks/gate_benchmark.py [--retrains 20 --rows 5000 --resamples 1000]
        -> benchmarks/results/gate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlops_assets.data.generator import generate_churn  # noqa: E402
from mlops_assets.data.spec import DEMO_SPEC  # noqa: E402
from mlops_assets.training.gate import POLICIES, GatePlan, compare, paired_bootstrap_interval  # noqa: E402
from mlops_assets.training.model import build_pipeline, positive_scores  # noqa: E402
from mlops_assets.training.split import SplitPlan, split  # noqa: E402


def sklearn_interval(y, candidate, champion, resamples: int, level: float, seed: int) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        if len(np.unique(y[rows])) == 2:
            differences.append(roc_auc_score(y[rows], candidate[rows]) - roc_auc_score(y[rows], champion[rows]))
    alpha = (1 - level) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    return float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--retrains", type=int, default=20)
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--resamples", type=int, default=1_000)
    args = parser.parse_args()

    train, holdout = split(generate_churn(args.rows, seed=7), DEMO_SPEC, SplitPlan())
    y = holdout[DEMO_SPEC.target].to_numpy()

    def fit(seed: int) -> np.ndarray:
        model = build_pipeline(DEMO_SPEC, "random_forest", {"n_estimators": 60, "min_samples_leaf": 5}, seed)
        model.fit(train[DEMO_SPEC.features], train[DEMO_SPEC.target])
        return positive_scores(model, holdout, DEMO_SPEC)

    champion = fit(0)
    promoted = {policy: 0 for policy in POLICIES}
    differences, gate_seconds = [], []
    for seed in range(1, args.retrains + 1):
        candidate = fit(seed)
        for policy in POLICIES:
            started = time.perf_counter()
            result = compare(GatePlan(policy, resamples=args.resamples, seed=seed), y, candidate, champion)
            gate_seconds.append((policy, time.perf_counter() - started))
            promoted[policy] += result.passed
        differences.append(result.difference)

    started = time.perf_counter()
    fast = paired_bootstrap_interval(y, candidate, champion, args.resamples, 0.95, seed=0)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    slow = sklearn_interval(y, candidate, champion, args.resamples, 0.95, seed=0)
    slow_s = time.perf_counter() - started

    bootstrap_s = [s for policy, s in gate_seconds if policy != "plain"]
    print(f"{args.retrains} seeded retrains on unchanged data ({len(train):,} training rows, {len(y):,} holdout rows); "
          f"ROC AUC differences from {min(differences):+.4f} to {max(differences):+.4f}")
    print(f"{'policy':<18}{'promoted':>10}")
    for policy, count in promoted.items():
        print(f"{policy:<18}{count:>7} / {args.retrains}")
    print(f"gate time per run (bootstrap, {args.resamples} resamples): median {np.median(bootstrap_s) * 1000:.0f} ms")
    print(f"interval, vectorised: [{fast[0]:+.4f}, {fast[1]:+.4f}] in {fast_s * 1000:.0f} ms; "
          f"sklearn loop: [{slow[0]:+.4f}, {slow[1]:+.4f}] in {slow_s * 1000:.0f} ms; ratio {slow_s / fast_s:.1f}x")
    out = ROOT / "benchmarks" / "results" / "gate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "retrains": args.retrains, "rows": args.rows, "holdout_rows": len(y), "resamples": args.resamples,
        "promoted": promoted, "difference_range": [min(differences), max(differences)],
        "gate_ms_median": float(np.median(bootstrap_s) * 1000),
        "interval_vectorised": {"interval": fast, "ms": fast_s * 1000},
        "interval_sklearn_loop": {"interval": slow, "ms": slow_s * 1000}, "speedup": slow_s / fast_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
