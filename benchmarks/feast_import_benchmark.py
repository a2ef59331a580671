"""What importing Feast costs a fresh process, plain and through ``import_feast`` (typeguard's
instrumentation off, see mlops_assets/features/feast_import.py). Alternates the two, ``--runs`` each,
each in a new interpreter; the load average is recorded next to the figures (the machine is shared).

    .venv/bin/python benchmarks/feast_import_benchmark.py [--runs 5]   -> benchmarks/results/feast_import.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMED = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
STATEMENTS = {"plain `import feast`": "import feast",
              "import_feast()": "from mlops_assets.features.feast_import import import_feast; import_feast()"}


def seconds(statement: str) -> float:
    done = subprocess.run([sys.executable, "-c", TIMED.format(statement=statement)], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    samples = {name: [] for name in STATEMENTS}
    for _ in range(args.runs):
        for name, statement in STATEMENTS.items():
            samples[name].append(seconds(statement))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    plain, patched = medians["plain `import feast`"], medians["import_feast()"]
    result = {"runs": args.runs, "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "seconds": {name: [round(v, 3) for v in values] for name, values in samples.items()},
              "median_seconds": {name: round(v, 3) for name, v in medians.items()},
              "saved_seconds": round(plain - patched, 3), "speedup": round(plain / patched, 2)}
    for name, value in medians.items():
        print(f"{name:24s} median {value:6.2f} s  ({', '.join(f'{v:.2f}' for v in samples[name])})")
    print(f"saved {plain - patched:.2f} s per process ({plain / patched:.1f}x), load {load_before[0]:.1f}")
    out = ROOT / "benchmarks" / "results" / "feast_import.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
