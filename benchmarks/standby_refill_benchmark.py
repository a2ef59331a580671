"""Serving latency while the warm standby pool refills, with the standby processes niced and not.

After a deployment the ingress refills its pool of standby processes (serving/standby.py): each
imports kserve, MLflow, scikit-learn, SHAP or Feast, seconds of CPU on a 2-core machine shared with
the replicas serving traffic. For each niceness (``MLOPS_SERVING_STANDBY_NICENESS``; default 10 and 0,
the old behaviour) and ``--cycles`` times: deploy the champion as the stable revision, wait until the
refill's processes start, send the entity path 100 requests/s (open loop) for ``--seconds`` while they
import ("during refill"), wait until they are idle, and send the same again ("steady", the baseline
measured in the same run). One MLOPS_HOME (the serving tests' fixture data) for every case.

    .venv/bin/python benchmarks/standby_refill_benchmark.py [--cycles 2] [--seconds 8] [--nice 10,0]
        -> benchmarks/results/standby_refill.json   (kept runs: standby_refill-run1.json, -run2.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serving_benchmark as sb  # noqa: E402


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def niceness(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def standby_pids(backend) -> list[int]:
    return [standby["pid"] for standby in backend.status().get("standby") or []]


def wait_for_refill(backend, before: set[int], timeout: float = 60.0) -> list[int]:
    """The pids of the refill that follows a deployment (new standby processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [pid for pid in standby_pids(backend) if pid not in before]
        if new:
            return new
        time.sleep(0.2)
    raise SystemExit(f"no standby refill within {timeout:.0f} s")


def wait_idle(pids: list[int], timeout: float = 120.0) -> float:
    """Wait until the standby processes stop using CPU (their imports are done); seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        used = cpu_seconds(pids)
        time.sleep(1.0)
        if cpu_seconds(pids) - used < 0.05:
            break
    return round(time.monotonic() - started, 1)


def one_case(nice: int, args, version: str, path: str, bodies: list[bytes]) -> dict:
    from mlops_assets.serving.backend_local import LocalServingBackend
    from mlops_assets.settings import get_settings

    os.environ["MLOPS_SERVING_STANDBY_NICENESS"] = str(nice)
    backend = LocalServingBackend(get_settings())
    cycles = []
    try:
        for _ in range(args.cycles):
            before = set(standby_pids(backend)) if backend.status().get("running") else set()
            state = backend.deploy(version)
            port = int(state["endpoint"].rsplit(":", 1)[1])
            refill = wait_for_refill(backend, before)
            nices = sorted({niceness(pid) for pid in refill} - {None})
            during = asyncio.run(sb.fixed_rate(port, path, bodies, 100.0, args.seconds))
            during["standby_cpu_s"] = round(cpu_seconds(refill), 2)
            waited = wait_idle(refill)
            steady = asyncio.run(sb.fixed_rate(port, path, bodies, 100.0, args.seconds))
            cycles.append({"standby_niceness_seen": nices, "during_refill": during, "steady": steady,
                           "waited_for_idle_s": waited, "load_average": [round(x, 2) for x in os.getloadavg()]})
            print(f"nice {nice}: during refill p99 {during['p99_ms']:.1f} ms (p50 {during['p50_ms']:.1f}), "
                  f"steady p99 {steady['p99_ms']:.1f} ms; standby nice {nices}, load {os.getloadavg()[0]:.1f}")
    finally:
        backend.stop(every_model=True)
    return {"cycles": cycles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--nice", default="10,0", help="standby niceness values to compare")
    parser.add_argument("--home", default=None, help="an MLOPS_HOME prepared before (default: a fresh one)")
    args = parser.parse_args()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="mlops-refill-"))
    os.environ["MLOPS_HOME"] = str(home)
    os.environ.pop("MLOPS_SERVING_STANDBY", None)  # the default pool: one per replica and role
    settings = sb.prepare_home(home) if not args.home else None
    from mlops_assets.settings import get_settings

    settings = settings or get_settings()
    spec = settings.dataset_spec()
    version = sb.champion_version(settings)
    bodies = [json.dumps({"instances": [{spec.entity: int(i)}]}).encode() for i in sb.entity_ids(settings, spec)]
    path = f"/v1/models/{settings.model_name}:predict"
    results = {f"nice_{n}": one_case(int(n), args, version, path, bodies) for n in args.nice.split(",")}
    summary = {}
    for case, result in results.items():
        during = [c["during_refill"]["p99_ms"] for c in result["cycles"]]
        steady = [c["steady"]["p99_ms"] for c in result["cycles"]]
        summary[case] = {"during_refill_p99_ms": during, "steady_p99_ms": steady,
                         "ratio_during_to_steady": [round(d / s, 2) for d, s in zip(during, steady)]}
        print(f"{case}: p99 during refill {during} ms vs steady {steady} ms "
              f"(ratio {summary[case]['ratio_during_to_steady']})")
    out = ROOT / "benchmarks" / "results" / "standby_refill.json"
    out.write_text(json.dumps({"seconds": args.seconds, "rate_per_s": 100, "summary": summary,
                               "cases": results}, indent=2) + "\n")
    print(f"-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
