"""The online A/B gate's policy and statistics: canary against stable on the same labelled window.

**Test.** One-sided non-inferiority of the canary's accuracy against the stable revision's, on the
labelled predictions each made since the canary started (the same time window for both). The
difference ``d = acc_canary - acc_stable`` gets Newcombe's hybrid score interval (method 10,
built from the two Wilson score intervals; ``statsmodels.stats.proportion.confint_proportions_2indep``
with ``method="newcomb"``) at confidence ``1 - 2 * alpha``, so each of its bounds is a one-sided test
at level ``alpha``. Newcombe's interval keeps its coverage with small samples and accuracies near 0 or 1,
where the Wald interval does not.

**Policy**, judged only once *each* revision has ``min_labelled_samples`` labelled predictions:

- ``promote`` when the lower bound is above ``-margin``: the canary is non-inferior (it is at most
  ``margin`` worse in accuracy, at level ``alpha``);
- ``rollback`` when the upper bound is below 0: the canary is significantly worse than stable;
- ``wait`` (keep the split) otherwise, and while either revision has too few labels;
- past ``max_wait_s`` since the canary started, a ``wait`` becomes ``rollback``: a canary that could
  not be shown non-inferior in the time allowed does not replace a model known to work.

Promotion is checked first: a canary significantly worse by less than the margin is, by definition
of the margin, acceptable.

In shadow mode both revisions answer the *same* requests; the same unpaired interval is used, which
is conservative for paired data (it ignores the positive correlation of the two models' errors).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import dagster as dg

MODES = ("off", "canary", "shadow")


class ABConfig(dg.Config):
    """The online A/B gate of a rollout. ``mode="off"`` keeps the old rollout (smoke test, then
    promote at once); ``canary`` keeps the canary at ``canary_percent`` of the traffic (sticky by
    entity) until :func:`decide` says promote or roll back; ``shadow`` answers every request from
    stable and sends a copy to the challenger, whose predictions are only logged."""

    mode: Literal["off", "canary", "shadow"] = "off"
    min_labelled_samples: int = 200  # per revision, before any decision
    alpha: float = 0.05  # one-sided significance level of each test
    margin: float = 0.02  # non-inferiority margin on accuracy (absolute)
    max_wait_s: float = 7 * 24 * 3600.0  # then roll back if still undecided

    def problems(self) -> list[str]:
        """What is wrong with this config, each naming its field (empty when valid)."""
        found = []
        if self.mode not in MODES:
            found.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if isinstance(self.min_labelled_samples, bool) or self.min_labelled_samples < 1:
            found.append(f"min_labelled_samples must be at least 1, got {self.min_labelled_samples!r}")
        if not 0.0 < self.alpha < 1.0:
            found.append(f"alpha (the significance level) must be in (0, 1), got {self.alpha!r}")
        if not 0.0 <= self.margin < 1.0:
            found.append(f"margin must be in [0, 1), got {self.margin!r}")
        if not self.max_wait_s > 0:
            found.append(f"max_wait_s must be positive, got {self.max_wait_s!r}")
        return found

    def checked(self, where: str = "A/B config") -> "ABConfig":
        """This config, or ``ValueError`` naming every invalid field."""
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid {where}: " + "; ".join(problems))
        return self

    def policy(self) -> dict:
        return {"mode": self.mode, "min_labelled_samples": self.min_labelled_samples, "alpha": self.alpha,
                "margin": self.margin, "max_wait_s": self.max_wait_s}


def policy_from(stored: dict) -> ABConfig:
    """The policy a rollout stored with the serving state, validated again."""
    return ABConfig(**{k: stored[k] for k in ABConfig.model_fields if k in stored}).checked(
        "A/B policy stored with the canary")


@dataclass(frozen=True)
class Comparison:
    n_canary: int
    n_stable: int
    correct_canary: int
    correct_stable: int
    accuracy_canary: float | None
    accuracy_stable: float | None
    difference: float | None  # canary - stable
    lower: float | None  # of the 1 - 2 alpha Newcombe interval of the difference
    upper: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def compare(correct_canary: int, n_canary: int, correct_stable: int, n_stable: int, alpha: float) -> Comparison:
    """Accuracies and the Newcombe interval of their difference (``None`` where a side has no labels)."""
    if n_canary == 0 or n_stable == 0:
        return Comparison(n_canary, n_stable, correct_canary, correct_stable,
                          correct_canary / n_canary if n_canary else None,
                          correct_stable / n_stable if n_stable else None, None, None, None)
    from statsmodels.stats.proportion import confint_proportions_2indep

    lower, upper = confint_proportions_2indep(correct_canary, n_canary, correct_stable, n_stable,
                                              method="newcomb", compare="diff", alpha=2 * alpha)
    p_c, p_s = correct_canary / n_canary, correct_stable / n_stable
    return Comparison(n_canary, n_stable, correct_canary, correct_stable, p_c, p_s, p_c - p_s,
                      float(lower), float(upper))


@dataclass(frozen=True)
class Decision:
    action: Literal["promote", "rollback", "wait"]
    reason: str
    comparison: Comparison
    elapsed_s: float


def decide(policy: ABConfig, comparison: Comparison, elapsed_s: float) -> Decision:
    """Promote, roll back or wait, as the module docstring says."""
    c, n_min = comparison, policy.min_labelled_samples
    timed_out = elapsed_s >= policy.max_wait_s
    if c.n_canary < n_min or c.n_stable < n_min:
        reason = (f"{c.n_canary} labelled canary and {c.n_stable} labelled stable predictions, fewer than the "
                  f"{n_min} needed of each")
        if timed_out:
            return Decision("rollback", f"{reason} after {elapsed_s:.0f} s (max_wait_s {policy.max_wait_s:g}): "
                                        "rolled back, the canary was not shown non-inferior in time", c, elapsed_s)
        return Decision("wait", reason, c, elapsed_s)
    interval = (f"accuracy canary {c.accuracy_canary:.4f} vs stable {c.accuracy_stable:.4f}, difference "
                f"{c.difference:+.4f}, {100 * (1 - 2 * policy.alpha):g}% Newcombe interval "
                f"[{c.lower:+.4f}, {c.upper:+.4f}] (n {c.n_canary}/{c.n_stable})")
    if c.lower > -policy.margin:
        return Decision("promote", f"non-inferior: {interval}; lower bound above -margin "
                                   f"{-policy.margin:+.4f}", c, elapsed_s)
    if c.upper < 0:
        return Decision("rollback", f"significantly worse: {interval}; upper bound below 0", c, elapsed_s)
    if timed_out:
        return Decision("rollback", f"undecided after {elapsed_s:.0f} s (max_wait_s {policy.max_wait_s:g}): "
                                    f"{interval}", c, elapsed_s)
    return Decision("wait", f"undecided: {interval}", c, elapsed_s)
