"""The closed loop as building blocks: materialize, send traffic, deliver labels, report drift, run
the Dagster daemon and wait for the run its sensor starts. The `mlops` command and the end-to-end
tests both use these, so the demo is what the tests prove.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import dagster as dg

from mlops_assets.naming import MODEL_TAG
import httpx

from mlops_assets.atomic import atomic_write_text
from mlops_assets.settings import PROJECT_ROOT, Settings

# Everything but the monitoring assets, which need traffic first.
BUILD_SELECTION = ["dataset", "feature_table", "feature_store", "training_set", "holdout_set",
                   "candidate_model", "model_explanations", "champion_model", "inference_service",
                   "batch_predictions"]


# The steps that move aliases or change serving share one pool (`mlops_release`): one at a time.
# A queued run (a sensor's request) is launched within 1 s instead of the daemon's default 5 s.
INSTANCE_DEFAULTS = {"telemetry": {"enabled": False},
                     "concurrency": {"pools": {"granularity": "op", "default_limit": 1}},
                     "run_queue": {"dequeue_interval_seconds": 1}}


def instance_config(settings: Settings) -> tuple[dict, dict]:
    """(defaults an existing dagster.yaml keeps its own values for, settings the profile requires):
    runs, events and schedules in PostgreSQL when the profile has a server (stack), else SQLite files
    in DAGSTER_HOME."""
    required = {}
    if settings.postgres_url:
        url = settings.postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1).rstrip("/")
        required["storage"] = {"postgres": {"postgres_url": f"{url}/dagster"}}
    return INSTANCE_DEFAULTS, required


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance, the one `dagster dev` and the daemon use (config in DAGSTER_HOME); an
    existing dagster.yaml keeps its settings, gains the defaults it lacks and the profile's storage."""
    import yaml

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    path = settings.dagster_home / "dagster.yaml"
    config = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    defaults, required = instance_config(settings)
    merged = {**defaults, **config, **required}
    if merged != config:
        atomic_write_text(path, yaml.safe_dump(merged, sort_keys=False))
    return dg.DagsterInstance.from_config(str(settings.dagster_home))


QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[str],
                run_config: dict | None = None, tags: dict | None = None,
                model: str | None = None) -> dg.ExecuteInProcessResult:
    """In-process materialization; the run and its events land in ``instance`` (visible in the UI).
    With ``model``, ``selection`` and ``run_config`` use plain asset names and mean that model's."""
    if model is not None:
        selection = [f"{model}/{name}" for name in selection]
        tags = {MODEL_TAG: model, **(tags or {})}
    return dg.materialize([*defs.assets, *defs.asset_checks], selection=selection, instance=instance,
                          resources=defs.resources, run_config={**QUIET_LOGS, **(run_config or {})},
                          tags=tags, raise_on_error=False)


# --- traffic and labels ------------------------------------------------------------------------
@dataclass
class Traffic:
    scenario: str
    sent: int = 0
    failed: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def send_traffic(settings: Settings, scenario: str, requests: int, seed: int, rate: float = 0.0,
                 concurrency: int = 4) -> Traffic:
    """Send new customers' snapshots from ``scenario`` to the serving endpoint as feature rows.

    ``rate`` > 0 paces the requests (per second); 0 sends as fast as ``concurrency`` allows. The true
    labels are kept per request id, for `deliver_labels` to drop later as the feedback path.
    """
    from mlops_assets.data.generator import production_window
    from mlops_assets.serving.backend_local import LocalServingBackend

    endpoint = LocalServingBackend(settings).endpoint
    if endpoint is None:
        raise RuntimeError("nothing is serving: materialize inference_service first (mlops demo does)")
    spec = settings.dataset_spec()
    rows = production_window(requests, seed=seed, scenario=scenario)
    instances = rows[[spec.entity, *spec.features]].to_dict("records")
    labels = rows[spec.target].tolist()
    url = f"{endpoint}/v1/models/{settings.model_name}:predict"
    traffic = Traffic(scenario=scenario)
    started = time.monotonic()

    def one(i: int, client: httpx.Client) -> None:
        if rate > 0:
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        t0 = time.perf_counter()
        try:
            response = client.post(url, json={"instances": [instances[i]]})
        except httpx.HTTPError as exc:
            traffic.failed += 1
            traffic.errors.append(str(exc))
            return
        traffic.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            traffic.failed += 1
            traffic.errors.append(f"{response.status_code}: {response.text[:200]}")
            return
        traffic.labels[response.json()["request_ids"][0]] = int(labels[i])

    with httpx.Client(timeout=10.0) as client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: one(i, client), range(requests)))
    traffic.sent = requests
    return traffic


def deliver_labels(settings: Settings, labels: dict[str, int]) -> str:
    """The feedback path, where the profile's monitoring reads labels: a JSON Lines file locally,
    ``POST /labels`` to the sink in `stack`. Returns where they went."""
    from mlops_assets.resources import monitoring

    return monitoring(settings).deliver_labels(labels)


def window_config(since: datetime) -> dict:
    """A drift/performance window covering the traffic sent since ``since``."""
    end = datetime.now(timezone.utc)
    hours = (end - since).total_seconds() / 3600 + 1 / 3600
    # a fixed end: the run starts a moment later, and "now" then would cut the window's start
    return {"window_hours": hours, "window_end": end.isoformat()}


# --- the daemon --------------------------------------------------------------------------------
class Daemon:
    """`dagster-daemon run` on this project's workspace, against the settings' instance."""

    def __init__(self, settings: Settings, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.log_path = settings.logs_dir / "dagster-daemon.log"
        self.env = {**settings.env_for_subprocess(), **(extra_env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")]
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=self.env, stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_triggered_run(instance: dg.DagsterInstance, after: float, job_name: str,
                           timeout: float = 300.0, on_tick: Callable[[str], None] | None = None):
    """The first run of ``job_name`` created after ``after`` (epoch s), once it has finished."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        runs = [r for r in instance.get_run_records(dg.RunsFilter(job_name=job_name), limit=5)
                if r.create_timestamp.timestamp() >= after]
        if runs:
            run = runs[-1].dagster_run
            if run.status != seen and on_tick:
                on_tick(f"run {run.run_id[:8]} {run.status.value}")
            seen = run.status
            if run.is_finished:
                return run
        time.sleep(1.0)
    raise TimeoutError(f"no finished {job_name} run within {timeout:.0f} s; see {instance.root_directory}")


def step_durations(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds from each step's start to its last event (success, failure or check result)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event and event.step_key:
            step = plain_step(event.step_key)
            if event.event_type_value == "STEP_START":
                first[step] = record.timestamp
            last[step] = record.timestamp
    return {step: round(last[step] - first[step], 2) for step in first}


def run_step_events(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[str]]:
    """{step: [event types]} of a run, to see which steps ran, failed or were skipped (steps named
    without their model prefix: ``inference_service``, not ``churn__inference_service``)."""
    steps: dict[str, list[str]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event and event.step_key:
            steps.setdefault(plain_step(event.step_key), []).append(event.event_type_value)
    return steps


def plain_step(step_key: str) -> str:
    """``churn__candidate_model`` -> ``candidate_model`` (a model's step, by its asset's own name)."""
    return step_key.split("__", 1)[1] if "__" in step_key else step_key


# --- the loop's timeline -----------------------------------------------------------------------
# Run steps grouped into the loop's stages (step keys of retrain_job).
LOOP_STAGES = {"data + features": ("dataset", "dataset_dataset_schema", "feature_table", "feature_store", "training_and_holdout"),
               "training": ("candidate_model",),
               "gate": ("candidate_model_beats_champion", "candidate_model_meets_floor"),
               "promotion": ("champion_model", "champion_model_aliases_resolve")}
# (stage, the rollout's log line that ends it; deployment/local.py writes them)
ROLLOUT_MARKS = (("rollout: checks before the canary", "canary: v"),
                 ("rollout: canary replicas start and get ready", " ready at "),
                 ("rollout: smoke test", " passed ("), ("rollout: promote to 100%", " serves 100%"))


def loop_timeline(instance: dg.DagsterInstance, run_id: str) -> dict:
    """Seconds, from the event log, from the report that triggered ``run_id`` (its ``mlops/<asset>_id``
    tag) to the new champion serving 100% (the rollout's own log line), by stage."""
    run = instance.get_run_records(dg.RunsFilter(run_ids=[run_id]))[0]
    tag = next((k for k in run.dagster_run.tags if k.startswith("mlops/") and k.endswith("_id")), None)
    if tag is None:
        return {}
    asset, report_id = tag[len("mlops/"):-len("_id")], int(run.dagster_run.tags[tag])
    model = run.dagster_run.tags.get(MODEL_TAG)
    key = dg.AssetKey([model, asset]) if model else dg.AssetKey(asset)
    report = next((r for r in instance.fetch_materializations(key, limit=20).records
                   if r.storage_id == report_id), None)
    if report is None:
        return {}
    marks: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        kind = event.event_type_value if event else None
        if kind in ("PIPELINE_STARTING", "PIPELINE_START"):  # dequeued and launching; executing
            marks.setdefault(kind, record.timestamp)
        if event and event.step_key and kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED",
                                                  "ASSET_CHECK_EVALUATION"):
            steps.setdefault(plain_step(event.step_key), []).append(record.timestamp)
        if not event and record.step_key and plain_step(record.step_key) == "inference_service":
            for name, text in ROLLOUT_MARKS:
                if text in record.user_message:
                    marks.setdefault(name, record.timestamp)
    done = marks.get("rollout: promote to 100%")
    if done is None or "PIPELINE_START" not in marks:
        return {}
    created = run.create_timestamp.timestamp()
    launching = marks.get("PIPELINE_STARTING", created)
    stages = {"sensor: report -> run requested": created - report.timestamp,
              "queue: -> dequeued and launched": launching - created,
              "launch: run worker + code location": marks["PIPELINE_START"] - launching}
    in_loop = {k: v for k, v in steps.items() if v[0] < done}
    for stage, keys in LOOP_STAGES.items():
        stages[stage] = sum(max(steps[k]) - min(steps[k]) for k in keys if k in in_loop)
    rollout_start = min(steps.get("inference_service", [done]))
    previous = rollout_start
    for name, _ in ROLLOUT_MARKS:
        stages[name] = marks.get(name, previous) - previous
        previous = marks.get(name, previous)
    grouped = sum(stages.values())
    stages["between steps (run set-up, events)"] = (done - report.timestamp) - grouped
    return {"stages": {k: round(v, 2) for k, v in stages.items()}, "total": round(done - report.timestamp, 2),
            "trigger": asset, "after_100_percent": {k: round(max(v) - min(v), 2) for k, v in steps.items()
                                                    if k not in in_loop}}
