"""Loop latency: from the drift report that crosses the threshold to the new champion at 100%,
broken down by stage. Runs `mlops demo` in a fresh temporary MLOPS_HOME and reads its summary.

    .venv/bin/python benchmarks/loop_benchmark.py [--rows 5000]   -> benchmarks/results/loop.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlops_assets.settings import get_settings  # noqa: E402

TARGET_S = 60.0
# Run steps grouped into the stages the issue names.
STAGES = {"data + features": ("dataset", "feature_table", "feature_store", "training_and_holdout"),
          "training": ("candidate_model",), "gate": ("candidate_model_beats_champion", "candidate_model_meets_floor"),
          "promotion": ("champion_model",), "rollout (canary, smoke, promote)": ("inference_service",)}


def run_demo(rows: int, env: dict | None = None, home: str | None = None) -> dict:
    """`mlops demo` in a fresh MLOPS_HOME (``env`` adds settings, e.g. the stack's); its summary.
    With ``home`` the serving keeps running there (stop it with LocalServingBackend)."""
    with tempfile.TemporaryDirectory(prefix="mlops-loop-") as scratch:
        home = home or scratch
        settings = get_settings({**(env or {}), "MLOPS_HOME": home})
        command = [str(Path(sys.executable).with_name("mlops")), "demo", "--rows", str(rows),
                   "--keep-serving" if home != scratch else "--no-keep-serving"]
        subprocess.run(command, cwd=ROOT, env={**settings.env_for_subprocess(), **(env or {})}, check=True,
                       capture_output=True)
        return json.loads((Path(home) / "demo-summary.json").read_text())


def stage_rows(summary: dict) -> tuple[dict, float]:
    """Seconds per stage of the drift-triggered loop, and the whole loop."""
    steps = summary["after_drift"]["step_seconds"]
    loop = summary["stage_seconds"]["6. drift sensor -> retrain -> gate -> canary rollout"]
    rows = {"detection (drift report)": summary["stage_seconds"]["5. drift report"]}
    rows.update({stage: round(sum(steps.get(step, 0.0) for step in names), 2) for stage, names in STAGES.items()})
    rows["sensor + run launch + imports"] = round(loop - sum(v for k, v in rows.items() if k != "detection (drift report)"), 2)
    return rows, loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000)
    args = parser.parse_args()
    summary = run_demo(args.rows)
    won = summary["after_drift"]
    steps = won["step_seconds"]
    rows, loop = stage_rows(summary)
    print(f"{'stage':<36}{'seconds':>9}")
    for stage, seconds in rows.items():
        print(f"{stage:<36}{seconds:>9.1f}")
    print(f"{'report -> new champion at 100%':<36}{loop:>9.1f}   target {TARGET_S:.0f} s, ratio {loop / TARGET_S:.2f}")
    out = ROOT / "benchmarks" / "results" / "loop.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "stages": rows, "loop_seconds": loop, "target_seconds": TARGET_S,
                               "trigger": won["tags"].get("mlops/trigger"), "steps": steps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
