"""The comparison gate: candidate vs champion on the same holdout, decided by a paired bootstrap
confidence interval of the difference in ROC AUC, so noise cannot promote a model.

Policies:

- ``superiority``: the interval's lower bound is above 0 (the candidate is better, beyond noise);
- ``non_inferiority``: the lower bound is above ``-margin`` (not worse by more than the margin);
- ``plain``: the point difference is at least ``-tolerance`` (no interval; the old behaviour).

Automatic retrains (a run tagged ``mlops/trigger`` by a sensor or schedule) default to
``superiority``; manual runs to ``non_inferiority``. Any non-finite score fails, whatever the policy.

The bootstrap resamples rows with replacement (the same rows for both models: *paired*) and
computes both AUCs per resample. The AUC is computed from resample counts over the rows sorted
once by score (weighted Mann-Whitney with ties), vectorised across resamples: the same value as
``sklearn.metrics.roc_auc_score`` with the counts as sample weights (a test checks it), about 40x
faster than calling it per resample (``benchmarks/gate_benchmark.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

POLICIES = ("superiority", "non_inferiority", "plain")
AUTOMATIC_POLICY, MANUAL_POLICY = "superiority", "non_inferiority"
_CELLS_PER_BATCH = 4_000_000  # resamples x rows held in memory at once (float64: 32 MB)


class GateConfigError(ValueError):
    """The gate's configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class GatePlan:
    policy: str
    margin: float = 0.01  # non_inferiority: how much worse the candidate may be
    tolerance: float = 0.0  # plain: how much worse the candidate's point score may be
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    @classmethod
    def resolve(cls, policy: str | None, automatic: bool, **fields) -> "GatePlan":
        plan = cls(policy=policy or (AUTOMATIC_POLICY if automatic else MANUAL_POLICY), **fields)
        plan.validate()
        return plan

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise GateConfigError(f"gate policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.policy != "plain":
            if self.resamples < 1:
                raise GateConfigError(f"gate resamples={self.resamples} must be at least 1")
            if not 0 < self.level < 1:
                raise GateConfigError(f"gate level={self.level} must be between 0 and 1 (exclusive)")
        for name in ("margin", "tolerance"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise GateConfigError(f"gate {name}={value} must be a finite number >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    passed: bool
    candidate_score: float
    champion_score: float
    difference: float
    low: float
    high: float
    description: str

    def tags(self) -> dict[str, str]:
        return {"gate.candidate_score": f"{self.candidate_score:.6f}", "gate.champion_score": f"{self.champion_score:.6f}",
                "gate.margin": f"{self.difference:.6f}", "gate.ci_low": f"{self.low:.6f}",
                "gate.ci_high": f"{self.high:.6f}"}


def non_finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics whose value is NaN, infinite or not a number at all."""
    bad = {}
    for name, value in metrics.items():
        try:
            if not math.isfinite(float(value)):
                bad[name] = value
        except (TypeError, ValueError):
            bad[name] = value
    return bad


def compare(plan: GatePlan, y: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> Comparison:
    """Decide the gate for two models' scores ``candidate``/``champion`` on the same rows ``y``."""
    y = np.asarray(y)
    candidate_score, champion_score = (float(auc(y, p)) for p in (candidate, champion))
    difference = candidate_score - champion_score
    if plan.policy == "plain":
        low = high = difference
    else:
        low, high = paired_bootstrap_interval(y, candidate, champion, plan.resamples, plan.level, plan.seed)
    finite = (all(math.isfinite(v) for v in (candidate_score, champion_score, low, high))
              and bool(np.isfinite(candidate).all() and np.isfinite(champion).all()))
    if not finite:
        passed, why = False, "a score or the interval is not finite (NaN/inf): an undefined metric never passes"
    elif plan.policy == "superiority":
        passed, why = low > 0, f"superiority needs the lower bound > 0"
    elif plan.policy == "non_inferiority":
        passed, why = low > -plan.margin, f"non-inferiority needs the lower bound > -{plan.margin:g}"
    else:
        passed, why = difference >= -plan.tolerance, f"plain comparison, tolerance {plan.tolerance:g}"
    interval = ("" if plan.policy == "plain" else
                f", {plan.level:.0%} CI [{low:+.4f}, {high:+.4f}] from {plan.resamples} paired bootstrap resamples")
    description = (f"{'PASS' if passed else 'FAIL'} ({plan.policy}): roc_auc {candidate_score:.4f} vs "
                   f"{champion_score:.4f}, difference {difference:+.4f}{interval}; {why}")
    return Comparison(passed, candidate_score, champion_score, difference, low, high, description)


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when ``y`` has a single class."""
    return float(_weighted_auc(np.asarray(y), np.asarray(scores, dtype=float), np.ones((1, len(y))))[0])


def paired_bootstrap_interval(y: np.ndarray, candidate: np.ndarray, champion: np.ndarray, resamples: int,
                              level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of AUC(candidate) - AUC(champion) over paired resamples of the rows.

    Resamples that draw a single class (AUC undefined) are dropped; if more than half are, the
    interval is NaN (and the gate fails).
    """
    y = np.asarray(y)
    n = len(y)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    differences = []
    batch = max(1, _CELLS_PER_BATCH // n)
    for start in range(0, resamples, batch):
        size = min(batch, resamples - start)
        rows = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(rows.ravel(), minlength=size * n).reshape(size, n).astype(float)
        differences.append(_weighted_auc(y, np.asarray(candidate, dtype=float), counts)
                           - _weighted_auc(y, np.asarray(champion, dtype=float), counts))
    values = np.concatenate(differences)
    values = values[np.isfinite(values)]
    if len(values) * 2 < resamples:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of ``weights`` (resamples x rows): P(score_pos > score_neg) + half the ties."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], (y[order] == 1)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # groups of tied scores
    w = weights[:, order]
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / total, np.nan)
