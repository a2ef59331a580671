"""Two retrains launched two seconds apart against one instance, as real `dagster` processes: every
version that becomes @champion was gated by the run that promoted it, the audit trail and the Dagster
materializations agree, and nothing is left half-promoted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.loop import open_instance
from mlops_assets.registry.assets import RELEASE_POOL
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.settings import get_settings

from tests.training.conftest import TRAINING_SELECTION

SELECTION = [name for name in TRAINING_SELECTION if name != "model_explanations"]


def launch(home: Path, config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "DAGSTER_"))}
    env.update(MLOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), PYTHONUNBUFFERED="1")
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "mlops_assets.definitions",
               "--select", ",".join(f"churn/{name}" for name in SELECTION), "-c", str(config)]
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.integration
def test_overlapping_retrains_each_promote_only_what_they_gated(tmp_path):
    home = tmp_path / "home"
    settings = get_settings({"MLOPS_HOME": str(home)})
    settings.ensure_dirs()
    open_instance(settings).dispose()  # dagster.yaml with the release pool limited to one step
    configs = []
    for name, params in (("a", {"C": 0.002}), ("b", {"C": 1.0})):  # two different candidates
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"ops": {"dataset": {"config": {"rows": 3000}},
                                                "candidate_model": {"config": {"params": params}}}}))
        configs.append(path)
    first = launch(home, configs[0], tmp_path / "a.log")
    time.sleep(2)
    second = launch(home, configs[1], tmp_path / "b.log")
    codes = [process.wait(timeout=600) for process in (first, second)]
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("a", "b")}
    assert 0 in codes, logs  # at least one retrain promotes; the other may refuse, with its reason

    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    # the release steps took turns on the pool's single slot
    assert instance.event_log_storage.get_concurrency_info(RELEASE_POOL).slot_count == 1
    registry = ModelRegistry(settings)
    promotions = instance.fetch_materializations(dg.AssetKey(["churn", "champion_model"]), limit=10).records
    assert promotions, logs
    for record in promotions:
        version = record.asset_materialization.metadata["champion_version"].value
        tags = registry.version_info(version)["version_tags"]
        assert tags["gate.run_id"] == record.run_id, "promoted by a run that did not gate it"
        assert tags["dagster_run_id"] == record.run_id, "promoted a candidate another run trained"
        assert tags["gate.beats_champion"] == tags["gate.meets_floor"] == "passed"
    champion_moves = [move for move in registry.audit_log() if move.alias == "champion"]
    assert {(m.to_version, m.dagster_run_id) for m in champion_moves} == {
        (r.asset_materialization.metadata["champion_version"].value, r.run_id) for r in promotions}
    # the aliases are consistent: @champion is the last promotion, @previous the one before (if any)
    assert registry.version_of("champion") == champion_moves[-1].to_version
    assert registry.version_of("previous") == champion_moves[-1].from_version
    for code, name in zip(codes, "ab"):
        if code != 0:  # a refusal names why: @champion moved since its gate, or its gate failed
            assert ("@champion has moved" in logs[name] or "blocking asset check failed" in logs[name]
                    or "gate beats_champion failed" in logs[name]), logs[name][-3000:]
