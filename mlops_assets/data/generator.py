"""A deterministic customer-churn generator with named drift scenarios.

Each customer has monthly snapshots; the label says whether the customer churned in the month
after the snapshot. Scenarios shift the world the way production shifts:

- ``baseline``: the world the first model is trained on;
- ``price_rise``: covariate shift (monthly charges rise by about a third, support calls rise) that
  also makes customers more price-sensitive, so a model trained before it under-predicts churn;
- ``concept_shift``: the label's relation to the features changes (support calls stop mattering,
  long tenure stops protecting, fibre customers churn).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from .spec import DEMO_SPEC

SCENARIOS = ("baseline", "price_rise", "concept_shift")
SNAPSHOTS_PER_CUSTOMER = 3
DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONTRACTS = ("month-to-month", "one_year", "two_year")
PAYMENTS = ("card", "bank_transfer", "electronic_check", "mailed_check")
INTERNET = ("dsl", "fiber", "none")


def generate_churn(n_rows: int, seed: int = 7, scenario: str = "baseline",
                   start: datetime | None = None, first_customer_id: int = 1) -> pd.DataFrame:
    """Return ``n_rows`` snapshots (1k to 1M is the intended range) for ``scenario``."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if n_rows < 1:
        raise ValueError("n_rows must be at least 1")
    rng = np.random.default_rng(seed)
    start = start or DEFAULT_START
    n_customers = -(-n_rows // SNAPSHOTS_PER_CUSTOMER)
    customer = np.repeat(np.arange(first_customer_id, first_customer_id + n_customers),
                         SNAPSHOTS_PER_CUSTOMER)[:n_rows]
    snapshot = np.tile(np.arange(SNAPSHOTS_PER_CUSTOMER), n_customers)[:n_rows]
    # Customers join over 60 days; snapshots are 30 days apart, at a random hour.
    offset_s = rng.integers(0, 60 * 86400, n_customers)[customer - first_customer_id]
    seconds = offset_s + snapshot * 30 * 86400
    timestamps = pd.to_datetime(start) + pd.to_timedelta(seconds, unit="s")

    contract = rng.choice(CONTRACTS, n_rows, p=[0.55, 0.25, 0.20])
    payment = rng.choice(PAYMENTS, n_rows, p=[0.3, 0.25, 0.3, 0.15])
    internet = rng.choice(INTERNET, n_rows, p=[0.35, 0.45, 0.20])
    tenure = rng.gamma(2.0, 12.0, n_rows).astype(np.int64) + snapshot
    base_price = 20 + 30 * (internet == "dsl") + 55 * (internet == "fiber")
    monthly = base_price + rng.normal(10, 8, n_rows).clip(-15, 40)
    if scenario == "price_rise":
        monthly = monthly * 1.35 + 5
    support = rng.poisson(1.2 + 0.8 * (internet == "fiber") + 0.8 * (scenario == "price_rise"), n_rows)
    usage = rng.lognormal(2.5 + 0.5 * (internet == "fiber"), 0.6, n_rows) * (internet != "none")
    products = rng.integers(1, 5, n_rows)
    total = monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.05, n_rows)

    logit = (-1.2 + 1.3 * (contract == "month-to-month") - 0.9 * (contract == "two_year")
             - 0.045 * tenure + 0.035 * (monthly - 70) + 0.45 * support - 0.25 * products
             + 0.5 * (payment == "electronic_check"))
    if scenario == "price_rise":  # price sensitivity rises with the prices
        logit = logit + 0.03 * (monthly - 70) - 0.8
    if scenario == "concept_shift":
        logit = (-1.0 + 1.6 * (internet == "fiber") + 0.03 * tenure - 0.4 * support
                 + 0.8 * (contract == "two_year") - 0.02 * (monthly - 70) + 0.3 * products)
    churned = (rng.uniform(size=n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    return pd.DataFrame({
        DEMO_SPEC.entity: customer.astype(np.int64),
        DEMO_SPEC.timestamp: timestamps,
        "tenure_months": tenure,
        "monthly_charges": monthly.round(2),
        "total_charges": total.round(2),
        "support_calls": support.astype(np.int64),
        "data_usage_gb": usage.round(3),
        "num_products": products.astype(np.int64),
        "contract": contract.astype(object),
        "payment_method": payment.astype(object),
        "internet_service": internet.astype(object),
        DEMO_SPEC.target: churned,
    })


def production_window(n_rows: int, seed: int, scenario: str, days_after: int = 120) -> pd.DataFrame:
    """Snapshots of *new* customers after the training period: what serving sees in production."""
    return generate_churn(n_rows, seed=seed, scenario=scenario,
                          start=DEFAULT_START + timedelta(days=days_after),
                          first_customer_id=10_000_000 + seed * 1_000_000)
