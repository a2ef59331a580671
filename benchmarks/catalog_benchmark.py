"""Load time of the code location with 1, 2 and 10 model specs (issue 13): what each model adds to
``import mlops_assets.definitions`` (the code server, the daemon and every run worker pay it).

    .venv/bin/python benchmarks/catalog_benchmark.py [--repeat 3]

Each measurement is a fresh interpreter importing the definitions and resolving every job (what
``dagster definitions validate`` does); the 1-spec folder is the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mlops_assets.settings import PROJECT_ROOT  # noqa: E402 (the project, wherever this script was copied)

EXAMPLES = PROJECT_ROOT / "examples" / "models"
PROBE = ("import time; t = time.perf_counter(); from mlops_assets.definitions import defs; "
         "jobs = defs.resolve_all_job_defs(); print(time.perf_counter() - t, len(jobs))")


def folder_with(n: int, root: Path) -> Path:
    """``n`` specs: churn, then copies of tumor named tumor2..."""
    folder = root / f"models-{n}"
    folder.mkdir()
    (folder / "churn.yaml").write_text((EXAMPLES / "churn.yaml").read_text())
    tumor = yaml.safe_load((EXAMPLES / "tumor.yaml").read_text())
    for i in range(1, n):
        (folder / f"tumor{i}.yaml").write_text(yaml.safe_dump({**tumor, "name": f"tumor{i}"}))
    return folder


def load_seconds(folder: Path, home: Path) -> tuple[float, int]:
    env = {**os.environ, "MLOPS_MODELS_DIR": str(folder), "MLOPS_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=600, check=True).stdout.split()
    return float(out[-2]), int(out[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "catalog.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in (1, 2, 10):
            folder = folder_with(n, root)
            runs = [load_seconds(folder, root / "home") for _ in range(args.repeat)]
            results[n] = {"median_s": round(statistics.median(r[0] for r in runs), 3), "jobs": runs[0][1]}
    base = results[1]["median_s"]
    print(f"{'specs':>5} {'load s (median)':>16} {'jobs':>5} {'vs 1 spec':>10} {'per extra model s':>18}")
    for n, row in results.items():
        extra = (row["median_s"] - base) / (n - 1) if n > 1 else 0.0
        row.update(ratio=round(row["median_s"] / base, 2), per_extra_model_s=round(extra, 3))
        print(f"{n:>5} {row['median_s']:>16.3f} {row['jobs']:>5} {row['ratio']:>9.2f}x {extra:>18.3f}")
    load = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results, "repeat": args.repeat, "load_average": load}, indent=2))
    print(f"load average {load:.1f}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
