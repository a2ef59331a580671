"""The `stack` profile against `local`, measured in the same run on a stack started for the purpose:

1. loop time by stage (the loop benchmark's demo, once per profile) and the ratio stack / local;
2. the sink's throughput: CloudEvents acknowledged per second (each durable in S3), for single
   events from concurrent senders and for the serving side's batches;
3. serving p99 at 100 requests/s with the payload logger posting to the sink (stack) and with the
   local file log (local), the same model size and traffic.

    .venv/bin/python benchmarks/stack_benchmark.py [--rows 4000]   -> benchmarks/results/stack.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402

from loop_benchmark import run_demo, stage_rows  # noqa: E402
from mlops_assets.monitoring.sink_client import SinkPredictionLog  # noqa: E402
from mlops_assets.stack.services import Stack, free_ports  # noqa: E402


def sink_throughput(url: str, events: int = 3000, senders: int = 16) -> dict:
    record = {"ts": datetime.now(timezone.utc).isoformat(), "entity_id": 1, "features": {"customer_id": 1, "x": 0.5},
              "score": 0.5, "prediction": 1, "model_version": "1", "revision": "stable"}

    def one(i: int, client: httpx.Client) -> int:
        headers = {"ce-id": uuid.uuid4().hex, "ce-type": "org.mlops.prediction.log", "ce-source": "bench",
                   "ce-specversion": "1.0", "content-type": "application/json"}
        return client.post(f"{url}/events", json=[{**record, "request_id": f"b{i}"}], headers=headers).status_code

    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=senders)) as client, \
            ThreadPoolExecutor(senders) as pool:
        t0 = time.perf_counter()
        codes = list(pool.map(lambda i: one(i, client), range(events)))
        single = events / (time.perf_counter() - t0)
    assert set(codes) == {202}, set(codes)
    batched = SinkPredictionLog(url, source="bench", batch=1000)
    t0 = time.perf_counter()
    for i in range(50_000):
        batched.append([{**record, "request_id": f"c{i}"}])
    assert batched.flush(300)
    return {"events_per_s_single": round(single, 1), "records_per_s_batched": round(50_000 / (time.perf_counter() - t0), 1)}


def p99_at(endpoint: str, model: str, rate: float = 100.0, seconds: float = 20.0) -> dict:
    from mlops_assets.data.generator import production_window
    from mlops_assets.settings import get_settings

    spec = get_settings({}).dataset_spec()
    rows = production_window(int(rate * seconds), seed=5, scenario="baseline")
    instances = rows[[spec.entity, *spec.features]].to_dict("records")
    url = f"{endpoint}/v1/models/{model}:predict"
    latencies, failed = [], 0
    start = time.monotonic()

    def one(i: int, client: httpx.Client) -> None:
        nonlocal failed
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        t0 = time.perf_counter()
        response = client.post(url, json={"instances": [instances[i]]})
        latencies.append((time.perf_counter() - t0) * 1000)
        failed += response.status_code != 200

    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: one(i, client), range(len(instances))))
    ordered = sorted(latencies)
    return {"requests": len(ordered), "failed": failed, "p50_ms": round(ordered[len(ordered) // 2], 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000)
    args = parser.parse_args()
    from mlops_assets.serving.backend_local import LocalServingBackend
    from mlops_assets.settings import get_settings

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mlops-stack-bench-") as root:
        Path(root).chmod(0o755)  # the postgres user keeps its data under it
        stack = Stack(root=Path(root), ports=free_ports())
        try:
            stack.up()
            stack_env = {**stack.settings_env(), "MLOPS_STACK_ENV": str(stack.env_file)}
            for name, env in (("local", {}), ("stack", stack_env)):  # one at a time: 2 cores
                home = Path(root) / f"home-{name}"
                home.mkdir()
                summary = run_demo(args.rows, env=env, home=str(home))
                stages, loop = stage_rows(summary)
                results[name] = {"stages": stages, "loop_seconds": loop,
                                 "p99_at_100rps": p99_at(summary["endpoint"], "churn")}
                LocalServingBackend(get_settings({**env, "MLOPS_HOME": summary["mlops_home"]})).stop()
            results["sink"] = sink_throughput(stack.url("sink"))
        finally:
            stack.down()
    print(f"{'stage':<36}{'local s':>9}{'stack s':>9}{'ratio':>7}")
    for stage, seconds in results["local"]["stages"].items():
        other = results["stack"]["stages"][stage]
        print(f"{stage:<36}{seconds:>9.1f}{other:>9.1f}{other / seconds if seconds else float('nan'):>7.2f}")
    lo, st = results["local"]["loop_seconds"], results["stack"]["loop_seconds"]
    print(f"{'report -> new champion at 100%':<36}{lo:>9.1f}{st:>9.1f}{st / lo:>7.2f}")
    print(f"sink: {results['sink']['events_per_s_single']} events/s (single, 16 senders), "
          f"{results['sink']['records_per_s_batched']} records/s (serving batches)")
    for name in ("local", "stack"):
        p = results[name]["p99_at_100rps"]
        print(f"p99 at 100 req/s, {name:<5} ({'file log' if name == 'local' else 'payload logger -> sink'}): "
              f"{p['p99_ms']} ms (p50 {p['p50_ms']} ms, {p['failed']} failed of {p['requests']})")
    out = ROOT / "benchmarks" / "results" / "stack.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
