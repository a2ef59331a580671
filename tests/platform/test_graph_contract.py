"""The asset graph as a contract: a change to keys, deps, groups, checks or jobs shows as a diff.

Regenerate after an intended change: MLOPS_UPDATE_SNAPSHOT=1 pytest tests/platform/test_graph_contract.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from mlops_assets.definitions import defs
from mlops_assets.settings import PROJECT_ROOT

SNAPSHOT = Path(__file__).with_name("graph_contract.json")
HEAVY = ("mlflow", "feast", "evidently", "shap", "kserve")


def graph_contract(definitions: dg.Definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(_describe_check(graph.get_check_spec(check_key))
                             for check_key in graph.get_check_keys_for_assets({key})),
            "partitioned": node.partitions_def is not None,
        }
    jobs = {}
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        selected = job.asset_layer.executable_asset_keys if job.asset_layer else set()
        jobs[job.name] = sorted(key.to_user_string() for key in selected)
    return {
        "assets": assets, "jobs": jobs,
        "sensors": sorted(f"{s.name} -> {s.job_name}" for s in definitions.sensors),
        "schedules": sorted(f"{s.name} ({s.cron_schedule}) -> {s.job_name}" for s in definitions.schedules),
    }


def _describe_check(spec) -> str:
    return f"{spec.name}{' (blocking)' if spec.blocking else ''}"


def test_graph_matches_the_contract():
    current = graph_contract(defs)
    if os.environ.get("MLOPS_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, "the asset graph changed; review, then regenerate the snapshot"


def test_every_layer_has_its_group_and_the_gate_is_blocking():
    contract = graph_contract(defs)["assets"]
    groups = {spec["group"] for spec in contract.values()}
    assert groups == {f"churn_{layer}" for layer in
                      ("data", "features", "training", "registry", "deployment", "monitoring", "drift")}
    assert "beats_champion (blocking)" in contract["churn/candidate_model"]["checks"]
    assert "dataset_schema (blocking)" in contract["churn/dataset"]["checks"]
    assert contract["churn/champion_model"]["deps"] == ["churn/candidate_model"]


def test_importing_definitions_leaves_heavy_libraries_out():
    code = ("import sys, mlops_assets.definitions; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at load time: {result.stdout.strip()}"


def test_child_processes_resolve_the_same_mlflow_store_whatever_this_process_touched(tmp_path, monkeypatch):
    from mlops_assets.settings import get_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")  # as mlflow.set_tracking_uri leaves it
    settings = get_settings({"MLOPS_HOME": str(tmp_path)})
    child = get_settings(settings.env_for_subprocess())
    assert child.mlflow_tracking_uri == settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
