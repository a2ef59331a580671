"""What one hop of the entity path costs in CPU, by piece (the measurements behind serving/upstream.py
and serving/v1_direct.py).

    .venv/bin/python benchmarks/hop_benchmark.py [--home DIR] [--requests 2000] [--out FILE]

(1) client: CPU per keep-alive POST of one feature row to a running predictor, in the calling
    process and in the predictor, with httpx (what KServe's InferenceRESTClient uses), aiohttp, and
    the serving benchmark's minimal HTTP/1.1 client (a floor);
(2) app: CPU per V1 :predict through the predictor's ASGI app in process (no sockets), through
    FastAPI's routing and through the direct V1 handler;
(3) feast: CPU per one-id online lookup as the transformer makes it (``get_online_features`` +
    ``to_dict``) and of the online store's read alone (``provider.online_read``, where the former ends).
CPU time (not wall time): the figures hold on a loaded machine. Without ``--home`` a throw-away
MLOPS_HOME is prepared as in serving_benchmark.py. Results: benchmarks/results/hops.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu_cost  # noqa: E402
import serving_benchmark as sb  # noqa: E402

HEADERS = {"content-type": "application/json", "x-request-id": "bench", "x-mlops-revision": "stable"}


def clients(url: str, path: str, port: int, bodies: list[bytes], n: int) -> dict:
    import aiohttp
    import httpx

    async def with_httpx():
        async with httpx.AsyncClient() as client:
            for i in range(n):
                (await client.post(url, content=bodies[i % len(bodies)], headers=HEADERS)).json()

    async def with_aiohttp():
        async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding")) as session:
            for i in range(n):
                async with session.post(url, data=bodies[i % len(bodies)], headers=HEADERS) as response:
                    await response.read()

    async def minimal():
        connection = await sb.Connection.open("127.0.0.1", port)
        for i in range(n):
            await connection.post(path, bodies[i % len(bodies)])
        connection.close()

    return {"httpx": with_httpx, "aiohttp": with_aiohttp, "minimal_http11": minimal}


def measure_clients(settings, bodies: list[bytes], n: int, log_dir: Path) -> dict:
    import uvloop

    port = sb.free_port()
    env = {**settings.serving_env(), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    process = sb.start_server([sys.executable, "-m", "mlops_assets.serving", "--role", "predictor", "--model_name",
                               settings.model_name, "--model_version", sb.champion_version(settings),
                               "--http_port", str(port)], env, log_dir / "hop-predictor.log")
    path = f"/v1/models/{settings.model_name}:predict"
    results: dict[str, list] = {}
    try:
        sb.wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process, timeout=300)
        runs = clients(f"http://127.0.0.1:{port}{path}", path, port, bodies, n)
        for _ in range(2):  # interleaved, twice: the machine's load drifts
            for name, run_once in runs.items():
                server_before, started = cpu_cost.cpu_seconds(process.pid), time.process_time()
                uvloop.run(run_once())
                results.setdefault(name, []).append({
                    "client_cpu_ms": round((time.process_time() - started) * 1000 / n, 3),
                    "server_cpu_ms": round((cpu_cost.cpu_seconds(process.pid) - server_before) * 1000 / n, 3)})
    finally:
        process.terminate()
        process.wait(timeout=30)
    return results


def measure_app(settings, bodies: list[bytes], n: int) -> dict:
    from mlops_assets.serving.metrics import ServerMetrics
    from mlops_assets.serving.predictor import ChurnPredictor
    from mlops_assets.serving.server import build_app

    model = ChurnPredictor(settings.model_name, settings, sb.champion_version(settings))
    model.load()
    app = build_app(model, ServerMetrics(settings.model_name, "predictor"), "stable")
    direct, path = app.direct, f"/v1/models/{settings.model_name}:predict"

    async def call(body: bytes) -> None:
        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": [(b"content-length", str(len(body)).encode())]
                 + [(k.encode(), v.encode()) for k, v in HEADERS.items()]}
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        sent = []

        async def send(message):
            sent.append(message)

        await app(scope, lambda: _next(messages), send)
        assert sent[0]["status"] == 200, sent

    async def calls(count: int) -> None:
        for i in range(count):
            await call(bodies[i % len(bodies)])

    gc.collect()
    gc.freeze()
    results: dict[str, list] = {}
    for _ in range(3):
        for name, handler in (("fastapi", None), ("direct_v1", direct)):
            app.direct = handler
            asyncio.run(calls(200))
            started = time.process_time()
            asyncio.run(calls(n))
            results.setdefault(name, []).append(round((time.process_time() - started) * 1000 / n, 3))
    return {name: {"cpu_ms_per_call": values} for name, values in results.items()}


def measure_feast(settings, n: int) -> dict:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from mlops_assets.features.store import FEATURE_VIEW, FeatureStoreClient

    client = FeatureStoreClient(settings)
    refs, entity = client.feature_refs(), settings.dataset_spec().entity
    store = client.store
    view, provider = store.get_feature_view(FEATURE_VIEW), store._get_provider()
    names = [ref.split(":", 1)[1] for ref in refs]

    def feast_lookup(i: int) -> None:
        client.online_response([1 + i % 500], refs).to_dict()

    def store_read(i: int) -> None:
        key = EntityKey(join_keys=[entity], entity_values=[Value(int64_val=1 + i % 500)])
        provider.online_read(store.config, view, [key], names)

    results: dict[str, list] = {}
    for _ in range(2):
        for name, lookup in (("get_online_features", feast_lookup), ("online_store_read", store_read)):
            lookup(0)
            started = time.process_time()
            for i in range(n):
                lookup(i)
            results.setdefault(name, []).append(round((time.process_time() - started) * 1000 / n, 3))
    return {name: {"cpu_ms_per_lookup": values} for name, values in results.items()}


async def _next(messages):
    return next(messages, {"type": "http.disconnect"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="existing MLOPS_HOME with a @champion and a materialized store")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hops.json"))
    args = parser.parse_args()
    from mlops_assets.settings import get_settings

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    os.environ["MLOPS_HOME"] = str(home)
    settings = get_settings() if args.home else sb.prepare_home(home)
    rows = sb.feature_rows(settings, settings.dataset_spec())
    bodies = [json.dumps({"instances": [row]}).encode() for row in rows]
    log_dir = settings.logs_dir / "benchmark"
    log_dir.mkdir(parents=True, exist_ok=True)
    output = {"requests": args.requests, "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg(),
              "client_per_post": measure_clients(settings, bodies, args.requests, log_dir),
              "predictor_app_per_call": measure_app(settings, bodies, args.requests),
              "feast_one_id": measure_feast(settings, args.requests),
              "load_average_after": os.getloadavg()}
    print(json.dumps(output, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(output, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
