"""Helpers for the training-layer tests: the selection up to the registry, run configs, and
ways to read what a run recorded (check metadata, registered versions, the pickled assets)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import yaml

from mlops_assets.data.spec import DEMO_SPEC

from tests.conftest import Platform, check_results, make_platform

# Everything up to @champion; the serving assets need live servers and are left out.
TRAINING_SELECTION = ["dataset", "feature_table", "feature_store", "training_set", "holdout_set",
                      "candidate_model", "model_explanations", "champion_model"]
ROWS = 3_000  # small enough to keep the stories fast, large enough for a meaningful holdout


def run_config(rows: int = ROWS, **training: Any) -> dict:
    """Dataset rows plus `TrainingConfig` fields for candidate_model."""
    ops: dict[str, Any] = {"dataset": {"config": {"rows": rows}}}
    if training:
        ops["candidate_model"] = {"config": training}
    return {"ops": ops}


def check_metadata(result: dg.ExecuteInProcessResult, check: str) -> dict[str, Any]:
    """A check's metadata as plain values."""
    return {key: value.value for key, value in check_results(result)[check].metadata.items()}


def asset_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {key: value.value for key, value in event.step_materialization_data.materialization.metadata.items()}


def registered_versions(platform: Platform) -> list[str]:
    """Every version of the platform's registered model (empty when none was ever registered)."""
    registry = platform.resource("registry")
    found = registry.client.search_model_versions(f"name='{registry.name}'")
    return sorted((str(v.version) for v in found), key=int)


def aliases(platform: Platform) -> dict[str, str | None]:
    registry = platform.resource("registry")
    return {alias: registry.version_of(alias) for alias in ("champion", "previous", "challenger")}


def stored_output(platform: Platform, asset: str) -> Any:
    """The value the IO manager holds for an asset from the run that materialized it last."""
    latest = platform.instance.get_latest_materialization_event(dg.AssetKey(asset))
    with open(platform.settings.io_manager_dir / asset / latest.run_id, "rb") as handle:
        return pickle.load(handle)


def gate_line(label: str, result: dg.ExecuteInProcessResult) -> str:
    """One line with the gate's verdicts, printed so `pytest -s` shows the scores the tests saw."""
    checks = check_results(result)
    parts = [f"{name}: {'PASS' if checks[name].passed else 'FAIL'} ({checks[name].description})"
             for name in ("beats_champion", "meets_floor") if name in checks]
    return f"[gate] {label}: " + " | ".join(parts)


def byo_platform(tmp_path: Path, frame: pd.DataFrame) -> Platform:
    """A platform on a bring-your-own dataset config next to ``frame`` written as Parquet."""
    frame.to_parquet(tmp_path / "table.parquet")
    config = {"source": "table.parquet", "entity": "customer_id", "timestamp": "event_timestamp",
              "target": "churned", "numeric": list(DEMO_SPEC.numeric), "categorical": list(DEMO_SPEC.categorical),
              "integer": list(DEMO_SPEC.integer)}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(config))
    return make_platform(tmp_path / "home", dataset_config=str(tmp_path / "dataset.yaml"))
