"""The closed loop in `stack` with the real daemon: `MLOPS_PROFILE=stack mlops demo` (drift -> sensor
-> retrain -> gates -> canary -> champion at 100%, then a losing candidate), every run in a worker
process whose throwaway directory is gone afterwards; then the champion's data read back from a
brand-new directory through dvc.api by md5, and the drift report opened by its URL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest

from mlops_assets.loop import open_instance, run_step_events
from mlops_assets.registry.client import ModelRegistry
from mlops_assets.naming import job_name
from tests.stack.conftest import MODEL, scratch_dirs

pytestmark = pytest.mark.integration


def test_the_stack_demo_closes_the_loop(stack_demo):
    settings, result, summary, _ = stack_demo
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "DEMO OK" in result.stdout
    assert "labels delivered to http://127.0.0.1:" in result.stdout  # POST /labels on the sink
    won, lost = summary["after_drift"], summary["losing_candidate"]
    assert won["status"] == "SUCCESS" and won["promoted"] and won["serving_version"] == won["champion"]
    # the drift report's gauge also fires MLOpsDataDrift through Prometheus and Alertmanager:
    # whichever of the three sensors acts first retrains, once
    assert won["tags"]["mlops/trigger"] in ("drift", "performance", "alert:MLOpsDataDrift",
                                            "alert:MLOpsModelAccuracyDrop", "alert:MLOpsModelAccuracyBelowFloor")
    assert lost["status"] == "FAILURE" and not lost["promoted"]
    assert lost["champion"] == won["champion"] == lost["serving_version"]
    # one retrain per injected drift: not one per sensor (drift, performance, alert) that saw it
    retrains = open_instance(settings).get_run_records(dg.RunsFilter(job_name=job_name(MODEL, "retrain_job")))
    assert len(retrains) == 2, [r.dagster_run.tags.get("dagster/sensor_name") for r in retrains]
    registry = ModelRegistry(settings)
    assert registry.version_of("champion") == won["champion"]
    assert registry.version_of("previous") == summary["first_champion"]


def test_runs_were_launched_by_the_daemon_on_postgres_in_throwaway_directories(stack_demo):
    settings, _, summary, before = stack_demo
    instance = open_instance(settings)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    run = instance.get_run_by_id(summary["after_drift"]["run_id"])
    assert run.tags.get("dagster/sensor_name") in {job_name(MODEL, s) for s in ("drift_sensor", "performance_sensor", "alert_sensor")}
    assert "STEP_SUCCESS" in run_step_events(instance, run.run_id)["inference_service"]
    # every worker's directory is deleted when it ends: none left from a process that is gone
    leftovers = []
    for name in scratch_dirs() - before:
        pid = int(re.match(r"mlops-run-(\d+)-", name).group(1))
        if not Path(f"/proc/{pid}").exists():
            leftovers.append(name)
    assert not leftovers, leftovers
    # MLOPS_HOME holds configuration, logs and the local serving processes' state only
    assert {p.name for p in settings.home.iterdir()} <= {"dagster", "logs", "serving", "demo-summary.json",
                                                         "retrain.yaml"}
    assert not (settings.serving_dir / "prediction-log").exists()
    assert not (settings.serving_dir / "labels").exists()


def test_the_drift_report_is_in_s3_and_opens_by_its_url(stack_demo):
    settings, _, _, _ = stack_demo
    instance = open_instance(settings)
    records = instance.fetch_materializations(dg.AssetKey([MODEL, "drift_report"]), limit=10).records
    shares = [r.asset_materialization.metadata["drift_share"].value for r in records]
    assert max(shares) >= settings.drift_threshold and min(shares) < settings.drift_threshold
    url = records[0].asset_materialization.metadata["report_url"].value
    assert url.startswith(f"{settings.s3_endpoint_url}/{settings.s3_bucket}/reports/drift/")
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and len(page.content) > 1000 and b"<html" in page.content.lower()


def test_the_champions_dataset_and_holdout_read_back_by_md5_from_a_brand_new_directory(stack_demo, tmp_path):
    settings, _, summary, _ = stack_demo
    registry = ModelRegistry(settings)
    version = registry.client.get_model_version(MODEL, summary["after_drift"]["champion"])
    run = registry.client.get_run(version.run_id)
    tags = {**run.data.tags, **run.data.params}
    md5 = {name: next(v for k, v in tags.items() if k.endswith(f"{name}_md5")) for name in ("dataset", "holdout")}
    script = (
        "import io, json, sys, dvc.api, pandas as pd\n"
        "out = {}\n"
        "for name, md5 in json.loads(sys.argv[2]).items():\n"
        "    data = dvc.api.read(f'{name}.parquet', repo=sys.argv[1], rev=f'{name}-{md5}', mode='rb')\n"
        "    out[name] = len(pd.read_parquet(io.BytesIO(data)))\n"
        "print(json.dumps(out))\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **settings.extra}
    done = subprocess.run([sys.executable, "-c", script, settings.data_git_url, json.dumps(md5)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert rows["dataset"] > 4000  # the generated rows plus the labelled production feedback
    assert rows["holdout"] > 0
