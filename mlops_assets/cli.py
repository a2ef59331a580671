"""`mlops`: the demo of the whole loop, traffic simulation, status.

    mlops demo                 materialize, serve, drift, let the sensor retrain, gate, roll out
    mlops simulate ...         send traffic for a scenario at a rate, then deliver the labels
    mlops status               what serves, the registry aliases and their audit trail
    mlops stop                 stop the local serving processes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

from mlops_assets.automation import RETRAIN_JOB
from mlops_assets.naming import job_name
from mlops_assets.settings import SettingsError, get_settings

LOOP_STAGE = "drift sensor -> retrain -> gate -> canary rollout"


class Stages:
    """Prints each stage with the time it took and keeps the figures for the summary."""

    def __init__(self):
        self.started = time.monotonic()
        self.times: dict[str, float] = {}

    def run(self, name: str, action, *args, **kwargs):
        print(f"[{time.monotonic() - self.started:7.1f}s] {name} ...", flush=True)
        t0 = time.monotonic()
        result = action(*args, **kwargs)
        self.times[name] = round(time.monotonic() - t0, 1)
        print(f"           {name}: done in {self.times[name]:.1f}s", flush=True)
        return result

    @staticmethod
    def note(text: str) -> None:
        print(f"           {text}", flush=True)


def _require(result, what: str):
    if not result.success:
        failures = [e.event_specific_data.error.message.splitlines()[0] for e in result.all_events
                    if e.event_type_value == "STEP_FAILURE"]
        raise SystemExit(f"{what} failed: {'; '.join(failures) or 'see the Dagster UI'}")
    return result


def _metadata(result, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[-1] == asset:
            return {k: getattr(v, "value", v) for k, v in event.step_materialization_data.materialization.metadata.items()}
    return {}


def _send(stages: Stages, settings, scenario: str, requests: int, seed: int):
    from mlops_assets.loop import deliver_labels, send_traffic

    traffic = send_traffic(settings, scenario, requests, seed=seed)
    where = deliver_labels(settings, traffic.labels)
    stages.note(f"{traffic.sent} {scenario} requests, {traffic.failed} failed, p99 {traffic.p99_ms:.1f} ms; "
                f"{len(traffic.labels)} labels delivered to {where}")
    if traffic.failed:
        stages.note("first errors: " + "; ".join(traffic.errors[:3]))
    return traffic


def _drift_report(stages: Stages, defs, instance, since: datetime, model: str) -> dict:
    from mlops_assets.loop import materialize, window_config

    window = window_config(since)
    result = _require(materialize(defs, instance, ["drift_report", "model_performance"],
                                  {"ops": {"drift_report": {"config": window},
                                           "model_performance": {"config": window}}}, model=model), "drift report")
    drift, performance = _metadata(result, "drift_report"), _metadata(result, "model_performance")
    stages.note(f"drift share {drift.get('drift_share')} ({drift.get('status')}), drifted: "
                f"{drift.get('drifted_columns')}; accuracy {performance.get('accuracy')}; report {drift.get('report')}")
    return drift


def _await_retrain(stages: Stages, instance, after: float, registry, backend, model: str) -> dict:
    from mlops_assets.loop import (
        loop_timeline,
        run_step_events,
        step_durations,
        wait_for_triggered_run,
    )

    run = wait_for_triggered_run(instance, after, job_name(model, RETRAIN_JOB), on_tick=stages.note)
    steps = run_step_events(instance, run.run_id)
    durations = step_durations(instance, run.run_id)
    serving = backend.status()
    stable = (serving.get("revisions") or {}).get("stable") or {}
    outcome = {"run_id": run.run_id, "status": run.status.value, "tags": {k: v for k, v in run.tags.items() if k.startswith("mlops/")},
               "champion": registry.version_of("champion"), "previous": registry.version_of("previous"),
               "serving_version": str(stable.get("model_version")), "canary_percent": serving.get("canary_percent"),
               "promoted": "STEP_SUCCESS" in steps.get("champion_model", []), "step_seconds": durations,
               "timeline": loop_timeline(instance, run.run_id)}
    stages.note(f"run {run.run_id[:8]} {outcome['status']} (trigger {outcome['tags'].get('mlops/trigger')}); "
                f"@champion v{outcome['champion']}, serving v{outcome['serving_version']}")
    stages.note("steps: " + ", ".join(f"{k} {v}s" for k, v in durations.items()))
    if outcome["timeline"]:
        stages.note(f"report -> v{outcome['champion']} at 100%: {outcome['timeline']['total']}s (" + ", ".join(
            f"{k} {v}s" for k, v in outcome["timeline"]["stages"].items()) + ")")
    return outcome


def _move_previous_state_aside(settings) -> None:
    """The story needs a fresh start (a champion already trained on drifted data has nothing to
    learn); earlier state is moved, never deleted."""
    from mlops_assets.serving.backend_local import LocalServingBackend

    if not any((settings.home / part).exists() for part in ("dagster", "mlflow", "data", "serving")):
        return
    LocalServingBackend(settings).stop(every_model=True)
    aside = settings.home.with_name(f"{settings.home.name}.previous-{datetime.now():%Y%m%d-%H%M%S}")
    settings.home.rename(aside)
    print(f"earlier state moved to {aside} (--keep-state runs on it instead)")


def demo(args) -> int:
    from mlops_assets.definitions import build_definitions
    from mlops_assets.loop import BUILD_SELECTION, Daemon, materialize, open_instance
    from mlops_assets.registry.client import ModelRegistry
    from mlops_assets.serving.backend_local import LocalServingBackend

    settings = get_settings()
    if not args.keep_state:
        _move_previous_state_aside(settings)
    settings.ensure_dirs()
    defs, instance = build_definitions(settings), open_instance(settings)
    registry, backend, stages = ModelRegistry(settings), LocalServingBackend(settings), Stages()
    print(f"MLOPS_HOME={settings.home} (profile {settings.profile})")
    retrain_config = settings.model_home / "retrain.yaml"
    retrain_config.unlink(missing_ok=True)

    build = stages.run("1. materialize data, features, model, gates, registry, serving", materialize, defs, instance,
                       BUILD_SELECTION, {"ops": {"dataset": {"config": {"rows": args.rows}}}}, model=settings.model_name)
    _require(build, "the first materialization")
    first_champion = registry.version_of("champion")
    stages.note(f"@champion v{first_champion} serves at {backend.endpoint}")

    healthy_since = datetime.now(timezone.utc)
    stages.run("2. healthy traffic", _send, stages, settings, "baseline", args.requests, 1)
    stages.run("3. drift check on healthy traffic", _drift_report, stages, defs, instance, healthy_since,
               settings.model_name)

    def drift_round(first: int, title: str, requests: int, seed: int, outcome: str) -> dict:
        """Inject drifted traffic, report drift (what the hourly schedule does), await the sensor's run."""
        since = datetime.now(timezone.utc)
        stages.run(f"{first}. {title}: {args.scenario}", _send, stages, settings, args.scenario, requests, seed)
        report_at = time.time()
        stages.run(f"{first + 1}. drift report", _drift_report, stages, defs, instance, since, settings.model_name)
        return stages.run(f"{first + 2}. {outcome}", _await_retrain, stages, instance, report_at, registry, backend,
                          settings.model_name)

    with Daemon(settings, extra_env={"MLOPS_RETRAIN_COOLDOWN_MINUTES": "0"}) as daemon:
        stages.note(f"dagster-daemon started (log {daemon.log_path})")
        won = drift_round(4, "inject drift", args.drift_requests, 2, LOOP_STAGE)
        stages.note("second scenario: the retrained candidate is deliberately worse (shuffled labels)")
        retrain_config.write_text(json.dumps({"ops": {"candidate_model": {"config": {"shuffle_labels": True}}}}))
        try:
            lost = drift_round(7, "more drift", args.requests, 3, "drift sensor -> retrain -> gate fails")
        finally:
            retrain_config.unlink(missing_ok=True)

    summary = {
        "first_champion": first_champion, "after_drift": won, "losing_candidate": lost,
        "stage_seconds": stages.times, "mlops_home": str(settings.home),
        "ui": f"DAGSTER_HOME={settings.dagster_home} .venv/bin/dagster dev -w workspace.yaml",
        "reports": str(settings.reports_dir), "endpoint": backend.endpoint,
    }
    (settings.home / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    ok = (won["promoted"] and won["serving_version"] == won["champion"] != first_champion
          and not lost["promoted"] and lost["champion"] == won["champion"] == lost["serving_version"])
    print("\nSummary")
    print(f"  first champion            v{first_champion}")
    print(f"  after {args.scenario:<19} v{won['champion']} promoted and serving at 100% (run {won['run_id'][:8]})")
    print(f"  losing candidate          gate failed, champion stays v{lost['champion']} (run {lost['run_id'][:8]})")
    print(f"  loop time                 {stages.times['6. ' + LOOP_STAGE]}s "
          f"from drift report to the new champion at 100%")
    print(f"  Dagster UI                {summary['ui']}")
    print(f"  reports                   {summary['reports']}   MLflow: .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    print(f"  serving                   {backend.endpoint} (stop with: .venv/bin/mlops stop)")
    print(f"  summary                   {settings.home / 'demo-summary.json'}")
    print("DEMO OK" if ok else "DEMO FAILED: the loop did not behave as expected (see above)")
    if not args.keep_serving:
        backend.stop()
    return 0 if ok else 1


def simulate(args) -> int:
    from mlops_assets.loop import deliver_labels, send_traffic

    settings = get_settings()
    traffic = send_traffic(settings, args.scenario, args.requests, seed=args.seed, rate=args.rate)
    print(f"sent {traffic.sent} {args.scenario} requests ({traffic.failed} failed), p99 {traffic.p99_ms:.1f} ms")
    if not args.no_labels:
        print(f"labels for {len(traffic.labels)} requests dropped at {deliver_labels(settings, traffic.labels)}")
    return 0 if not traffic.failed else 1


def status(args) -> int:
    from mlops_assets.registry.client import (
        CHALLENGER,
        CHAMPION,
        PREVIOUS,
        ModelRegistry,
    )
    from mlops_assets.serving.backend_local import LocalServingBackend

    settings = get_settings()
    registry = ModelRegistry(settings)
    state = {"serving": LocalServingBackend(settings).status(),
             "aliases": {alias: registry.version_of(alias) for alias in (CHAMPION, CHALLENGER, PREVIOUS)},
             "audit": [move.__dict__ for move in registry.audit_log()[-10:]]}
    print(json.dumps(state, indent=2, default=str))
    return 0


def stop(args) -> int:
    from mlops_assets.serving.backend_local import LocalServingBackend

    LocalServingBackend(get_settings()).stop(every_model=True)
    print("serving stopped (every model, and the ingress)")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run the whole loop on the local profile")
    run_demo.add_argument("--rows", type=int, default=5_000, help="rows of the demo dataset")
    run_demo.add_argument("--requests", type=int, default=600, help="healthy requests (and the second drift batch)")
    # enough drifted traffic that the retrain has the new regime in its *training* rows, not only in the
    # holdout: with 3,000 it beat the champion by +0.0011 ROC AUC, which the superiority gate calls noise
    run_demo.add_argument("--drift-requests", type=int, default=6_000, help="drifted requests in the first batch")
    run_demo.add_argument("--scenario", default="price_rise", help="drift scenario to inject")
    run_demo.add_argument("--keep-serving", action=argparse.BooleanOptionalAction, default=True)
    run_demo.add_argument("--keep-state", action="store_true",
                          help="run on the existing MLOPS_HOME instead of moving it aside first")
    run_demo.set_defaults(handler=demo)
    sim = commands.add_parser("simulate", help="send scenario traffic, then deliver its labels")
    sim.add_argument("--scenario", default="baseline")
    sim.add_argument("--requests", type=int, default=500)
    sim.add_argument("--rate", type=float, default=50.0, help="requests per second (0 = as fast as possible)")
    sim.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    sim.add_argument("--no-labels", action="store_true")
    sim.set_defaults(handler=simulate)
    commands.add_parser("status", help="serving state and registry aliases").set_defaults(handler=status)
    commands.add_parser("stop", help="stop the local serving processes").set_defaults(handler=stop)
    return root


def quiet_library_warnings() -> None:
    """The demo talks to people: library deprecation notices are noise there (tests still see them)."""
    import warnings

    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from dagster import BetaWarning, PreviewWarning

        warnings.filterwarnings("ignore", category=BetaWarning)
        warnings.filterwarnings("ignore", category=PreviewWarning)
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_library_warnings()
    try:
        return args.handler(args)
    except (SettingsError, RuntimeError, TimeoutError) as exc:
        print(f"mlops {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
