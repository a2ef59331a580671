"""Serving benchmark: our serving paths next to the peers serving the same registered model.

    .venv/bin/python benchmarks/serving_benchmark.py [--requests 5000] [--concurrency 8] [--home DIR]
        [--replicas 2] [--mlserver /path/to/venv/bin/python] [--targets entity_path,predictor] [--out FILE]

Without ``--home`` it prepares a throw-away MLOPS_HOME (churn data in Feast, a registered
@champion) with the serving tests' fixture code. Targets, all started in this run:
(a) bare_kserve (the baseline): a bare ``kserve.ModelServer`` with the same scikit-learn model;
(b) predictor: ``python -m mlops_assets.serving --role predictor`` alone;
(c) mlflow_serve: ``mlflow models serve`` (MLflow's scoring server, --env-manager local);
(d) mlserver (with ``--mlserver``): MLServer + mlserver-mlflow, KServe's runtime for MLflow models,
    from its own environment (it needs starlette<1, which Feast here cannot use);
(e) entity_path: ingress -> transformer (Feast online lookup, one entity per request) -> predictor,
    with ``--replicas`` replicas per revision; (f) full_rows_path: the same with complete feature rows.
Each gets N requests at concurrency C (closed loop), then a fixed-rate run at 100 requests/s
(open loop: latency counted from the scheduled send time). The load generator is a minimal
keep-alive HTTP/1.1 client, so it costs the shared 2 cores as little as possible.
CPU milliseconds per request of each process of a target (ingress, transformers, predictors; a
single server with its child processes) are read from /proc during both runs: unlike wall time on a
shared machine, they hardly depend on what else runs (``cpu_cost.py``).
Results: printed table and benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu_cost  # noqa: E402


class Connection:
    """One keep-alive HTTP/1.1 connection sending POSTs with a JSON body (Content-Length answers only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes) -> int:
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":")[1]) for line in lines[1:] if line.lower().startswith(b"content-length"))
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def closed_loop(port: int, path: str, bodies: list[bytes], n: int, concurrency: int) -> dict:
    latencies, failures = [], 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal failures
        connection = await Connection.open("127.0.0.1", port)
        for i in counter:
            started = time.perf_counter()
            status = await connection.post(path, bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - started)
            failures += status != 200
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, failures, time.perf_counter() - started)


async def fixed_rate(port: int, path: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    """Open loop: request i is due at start + i / rate; latency counts from when it was due."""
    idle: list[Connection] = []
    latencies, failures = [], 0

    async def one(i: int, due: float) -> None:
        nonlocal failures
        connection = idle.pop() if idle else await Connection.open("127.0.0.1", port)
        status = await connection.post(path, bodies[i % len(bodies)])
        latencies.append(time.perf_counter() - due)
        failures += status != 200
        idle.append(connection)

    tasks, start = [], time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return summarize(latencies, failures, time.perf_counter() - start)


def summarize(latencies: list[float], failures: int, elapsed: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "failures": failures, "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def free_port() -> int:
    from mlops_assets.serving.revision import free_port as pick

    return pick()


def start_server(argv: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(log_path.parent))


def prepare_home(home: Path):
    """A fresh MLOPS_HOME with data in Feast and a registered @champion (the serving tests' fixture)."""
    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    from conftest import build_world

    return build_world(home).settings


def run(args) -> dict:
    from mlops_assets.serving.backend_local import LocalServingBackend
    from mlops_assets.settings import get_settings

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["MLOPS_SERVING_REPLICAS"] = str(args.replicas)
    settings = prepare_home(home) if not args.home else get_settings()
    spec = settings.dataset_spec()
    env = {**settings.serving_env(), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    version = champion_version(settings)
    rows = feature_rows(settings, spec)
    row_bodies = [json.dumps({"instances": [row]}).encode() for row in rows]
    entity_bodies = [json.dumps({"instances": [{spec.entity: int(row_id)}]}).encode()
                     for row_id in entity_ids(settings, spec)]
    log_dir = settings.logs_dir / "benchmark"
    log_dir.mkdir(parents=True, exist_ok=True)
    name, uri = settings.model_name, f"models:/{settings.model_name}/{version}"
    path = f"/v1/models/{name}:predict"
    results: dict = {}

    # (argv, readiness URL path, request path, bodies); every server gets the same model version.
    servers = {
        "bare_kserve": ([sys.executable, str(ROOT / "benchmarks" / "bare_kserve_server.py"), "--model_uri", uri,
                         "--model_name", name, "--http_port", "{port}"], f"/v1/models/{name}", path, row_bodies),
        "predictor": ([sys.executable, "-m", "mlops_assets.serving", "--role", "predictor", "--model_name", name,
                       "--model_version", version, "--http_port", "{port}"], f"/v1/models/{name}", path, row_bodies),
        "mlflow_serve": ([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", uri, "--env-manager",
                          "local", "-h", "127.0.0.1", "-p", "{port}"], "/ping", "/invocations",
                         [json.dumps({"dataframe_records": [row]}).encode() for row in rows]),
    }
    if args.mlserver:
        servers["mlserver"] = mlserver_target(args.mlserver, settings, uri, rows, spec, log_dir)
    wanted = set(args.targets.split(",")) if args.targets else None
    for target, (argv, ready, request_path, bodies) in servers.items():
        if wanted is not None and target not in wanted:
            continue
        port = free_port()
        argv = [part.replace("{port}", str(port)) for part in argv]
        ports = {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port()),
                 "MLSERVER_METRICS_PORT": str(free_port())}  # read by MLServer only
        path_env = {"PATH": f"{Path(argv[0]).parent}:{env.get('PATH', '')}"}  # mlflow serve runs `uvicorn`
        process = start_server(argv, {**env, **ports, **path_env}, log_dir / f"{target}.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}{ready}", process, timeout=300)
            results[target] = measure(port, request_path, bodies, args,
                                      {"server": cpu_cost.with_descendants(process.pid)})
        finally:
            process.terminate()
            process.wait(timeout=30)

    paths = {"entity_path": entity_bodies, "full_rows_path": row_bodies}
    if wanted is None or wanted & set(paths):
        backend = LocalServingBackend(get_settings())
        try:
            state = backend.deploy(version)
            port = int(state["endpoint"].rsplit(":", 1)[1])
            for target, bodies in paths.items():
                if wanted is None or target in wanted:
                    results[target] = measure(port, path, bodies, args, cpu_cost.serving_roles(state))
        finally:
            backend.stop()
    return report(results, args, version)


def mlserver_target(python: str, settings, uri: str, rows: list[dict], spec, log_dir: Path) -> tuple:
    """MLServer with mlserver-mlflow (KServe's runtime for MLflow models), from its own environment
    (it pins starlette<1, which this project's Feast cannot use): serves the same model files."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(log_dir / "mlserver-model"))
    repo = log_dir / "mlserver-repo"
    (repo / "churn").mkdir(parents=True, exist_ok=True)
    (repo / "churn" / "model-settings.json").write_text(json.dumps({
        "name": settings.model_name, "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": local}}))

    def datatype(name: str) -> str:
        return "BYTES" if name in spec.categorical else "INT64" if name in spec.integer else "FP64"

    bodies = [json.dumps({"parameters": {"content_type": "pd"}, "inputs": [
        {"name": f, "shape": [1], "datatype": datatype(f), "data": [row[f]]} for f in spec.features]}).encode()
        for row in rows]
    (repo / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "parallel_workers": 0}))
    return ([str(Path(python).parent / "mlserver"), "start", str(repo)], f"/v2/models/{settings.model_name}/ready",
            f"/v2/models/{settings.model_name}/infer", bodies)


def measure(port: int, path: str, bodies: list[bytes], args, roles: dict[str, list[int]]) -> dict:
    """Closed loop, then fixed rate; each with the CPU ms per request of every process of the target."""
    asyncio.run(closed_loop(port, path, bodies, min(500, args.requests), args.concurrency))  # warm-up
    result = {}
    for run_name, run_once in (
            ("closed_loop", lambda: closed_loop(port, path, bodies, args.requests, args.concurrency)),
            ("fixed_rate_100", lambda: fixed_rate(port, path, bodies, args.rate, args.seconds))):
        before = cpu_cost.snapshot(roles)
        result[run_name] = asyncio.run(run_once())
        result[run_name]["cpu_ms_per_request"] = cpu_cost.per_request_ms(
            before, cpu_cost.snapshot(roles), result[run_name]["requests"])
    result["load_average"] = os.getloadavg()
    return result


def champion_version(settings) -> str:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return str(mlflow.MlflowClient().get_model_version_by_alias(settings.model_name, "champion").version)


def feature_rows(settings, spec) -> list[dict]:
    import pandas as pd

    frame = pd.read_parquet(settings.feast_offline_path, columns=list(spec.features)).head(200)
    return frame.to_dict("records")


def entity_ids(settings, spec) -> list[int]:
    import pandas as pd

    ids = pd.read_parquet(settings.feast_offline_path, columns=[spec.entity])[spec.entity]
    return ids.drop_duplicates().head(1000).tolist()


def report(results: dict, args, version: str) -> dict:
    targets = {}
    if "bare_kserve" in results:  # ratios only when the baseline ran in this run
        base = results["bare_kserve"]["closed_loop"]
        for name, result in results.items():
            loop = result["closed_loop"]
            result["throughput_ratio_to_baseline"] = round(loop["requests_per_s"] / base["requests_per_s"], 2)
            result["p99_ratio_to_baseline"] = round(loop["p99_ms"] / base["p99_ms"], 2)
        if "predictor" in results:
            predictor = results["predictor"]
            targets["predictor_throughput_at_least_1.2x_bare_kserve"] = predictor["throughput_ratio_to_baseline"] >= 1.2
            targets["predictor_p99_no_worse_than_bare_kserve"] = predictor["closed_loop"]["p99_ms"] <= base["p99_ms"]
    if "entity_path" in results:
        targets["entity_path_p99_at_100_rps_within_8ms"] = results["entity_path"]["fixed_rate_100"]["p99_ms"] <= 8.0
    output = {"requests": args.requests, "concurrency": args.concurrency, "fixed_rate_per_s": args.rate,
              "fixed_rate_seconds": args.seconds, "replicas_per_revision": args.replicas, "model_version": version,
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "results": results,
              "targets_met": targets}
    print_table(output)
    out = Path(args.out) if args.out else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(output, indent=2))
    print(f"\nwritten to {out}")
    return output


def print_table(output: dict) -> None:
    print(f"\n{output['requests']} requests at concurrency {output['concurrency']}; fixed rate "
          f"{output['fixed_rate_per_s']:.0f}/s for {output['fixed_rate_seconds']:.0f} s")
    print(f"{'target':<14} {'req/s':>8} {'x base':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'fails':>6} | {'@100/s p50':>10} {'p99':>7}")
    for name, result in output["results"].items():
        loop, rate = result["closed_loop"], result["fixed_rate_100"]
        print(f"{name:<14} {loop['requests_per_s']:>8.0f} {result.get('throughput_ratio_to_baseline', 0):>7.2f} "
              f"{loop['p50_ms']:>7.2f} {loop['p95_ms']:>7.2f} {loop['p99_ms']:>7.2f} "
              f"{loop['failures'] + rate['failures']:>6} | {rate['p50_ms']:>10.2f} {rate['p99_ms']:>7.2f}")
    print("\nCPU ms per request by process (closed loop | fixed rate), load average 1/5/15 min")
    for name, result in output["results"].items():
        loop, rate = result["closed_loop"]["cpu_ms_per_request"], result["fixed_rate_100"]["cpu_ms_per_request"]
        roles = "  ".join(f"{role} {loop[role]:.2f} | {rate[role]:.2f}" for role in loop)
        print(f"{name:<14} {roles}   load {' '.join(f'{x:.1f}' for x in result['load_average'])}")
    for target, met in output["targets_met"].items():
        print(f"  {'met' if met else 'MISSED'}: {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--home", help="existing MLOPS_HOME with a @champion and a materialized store")
    parser.add_argument("--replicas", type=int, default=2, help="replicas per revision on the full paths")
    parser.add_argument("--mlserver", help="python of an environment with mlserver + mlserver-mlflow")
    parser.add_argument("--targets", help="comma-separated subset of bare_kserve, predictor, mlflow_serve, "
                        "mlserver, entity_path, full_rows_path (default: all)")
    parser.add_argument("--out", help=f"result file (default {RESULTS.relative_to(ROOT)})")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
