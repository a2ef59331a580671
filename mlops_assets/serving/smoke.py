"""Smoke tests of a deployed revision with real requests.

Requests go straight to the revision's transformer (so a 20% canary gets all of them), each answer
is checked (status, score in [0, 1], class = score >= 0.5, the expected model version), and the
error rate and latency are also read from the servers' own /metrics before and after. Safe to
import in the Dagster process.
"""

from __future__ import annotations

import time
from typing import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlops_assets.serving.backend_local import LocalServingBackend
from mlops_assets.serving.routing import REVISION_HEADER
from mlops_assets.settings import Settings, get_settings


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by (sample name, labels)."""
    text = httpx.get(f"{url}/metrics", timeout=timeout).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _sum(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and wanted <= sample_labels)


def histogram_quantile(before: dict, after: dict, name: str, quantile: float, **labels: str) -> float | None:
    """The quantile of the observations between two scrapes, as Prometheus estimates it (upper bound)."""
    buckets = sorted({float(dict(key)["le"]) for sample, key in after if sample == f"{name}_bucket"})
    counts = [(bound, _sum(after, f"{name}_bucket", le=_le(bound), **labels)
               - _sum(before, f"{name}_bucket", le=_le(bound), **labels)) for bound in buckets]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return None
    for bound, count in counts:
        if count >= quantile * total:
            return bound
    return buckets[-1]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def default_entity_ids(settings: Settings, n: int = 20) -> list[int]:
    import pandas as pd

    spec = settings.dataset_spec()
    ids = pd.read_parquet(settings.feast_offline_path, columns=[spec.entity])[spec.entity]
    return ids.drop_duplicates().head(n).astype(int).tolist()


WARM_UP_REQUESTS = 5


def run_smoke_test(settings: Settings | None = None, *, revision: str = "canary",
                   entity_ids: Sequence[int] | None = None, n_requests: int = 50,
                   max_error_rate: float = 0.0, max_p99_ms: float = 250.0) -> dict:
    """Send ``n_requests`` to ``revision``; the result says ``passed`` and carries the figures."""
    settings = settings or get_settings()
    state = LocalServingBackend(settings).status()
    target = (state.get("revisions") or {}).get(revision)
    if not state.get("running") or target is None:
        return {"passed": False, "revision": revision, "reason": f"no running {revision} revision"}
    url, expected_version = target["transformer"]["url"], str(target["model_version"])
    ids = list(entity_ids) if entity_ids else default_entity_ids(settings)
    entity = settings.dataset_spec().entity
    server_labels = {"revision": revision, "role": "transformer"}
    # a few requests first, not judged: a process's first answers pay one-off costs (lazy imports,
    # the first online-store read, connection set-up) that say nothing about how it serves
    send_checked_requests(f"{url}/v1/models/{state['model_name']}:predict", revision,
                          [{entity: ids[i % len(ids)]} for i in range(WARM_UP_REQUESTS)], expected_version)
    before = scrape(url)
    answers = send_checked_requests(f"{url}/v1/models/{state['model_name']}:predict", revision,
                                    [{entity: ids[i % len(ids)]} for i in range(n_requests)], expected_version)
    after = scrape(url)
    requests = _sum(after, "mlops_requests_total", **server_labels) - _sum(before, "mlops_requests_total",
                                                                           **server_labels)
    errors = (_sum(after, "mlops_request_errors_total", **server_labels)
              - _sum(before, "mlops_request_errors_total", **server_labels))
    result = {
        "revision": revision, "model_version": expected_version, **answers,
        "server_requests": int(requests), "server_error_rate": (errors / requests) if requests else None,
        "server_p99_latency_ms": _ms(histogram_quantile(before, after, "mlops_request_latency_seconds", 0.99,
                                                        **server_labels)),
    }
    result["checks"] = {
        "all_answers_valid": not answers["failed_requests"],
        "server_saw_requests": requests >= n_requests,
        "error_rate_ok": requests > 0 and errors / requests <= max_error_rate,
        "latency_ok": result["server_p99_latency_ms"] is not None and result["server_p99_latency_ms"] <= max_p99_ms,
    }
    result["passed"] = all(result["checks"].values())
    return result


def send_checked_requests(predict_url: str, revision: str, instances: Sequence[dict], version: str) -> dict:
    """One V1 request per instance, each answer checked; the counts, first problems and client latency."""
    latencies, problems = [], []
    with httpx.Client(timeout=10.0) as client:
        for instance in instances:
            started = time.perf_counter()
            problem = _check_one(client, predict_url, revision, instance, version)
            latencies.append((time.perf_counter() - started) * 1000)
            if problem:
                problems.append(problem)
    latencies.sort()
    return {"requests": len(instances), "failed_requests": len(problems), "problems": problems[:5],
            "client_p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "client_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)
            if latencies else None}


def _check_one(client: httpx.Client, url: str, revision: str, instance: dict, version: str) -> str | None:
    entity_id = next(iter(instance.values()))
    try:
        response = client.post(url, json={"instances": [instance]}, headers={REVISION_HEADER: revision})
    except httpx.HTTPError as exc:
        return f"entity {entity_id}: {type(exc).__name__}"
    if response.status_code != 200:
        return f"entity {entity_id}: HTTP {response.status_code} {response.text[:200]}"
    body = response.json()
    score, predicted = body["predictions"][0], body["classes"][0]
    if not 0.0 <= score <= 1.0 or predicted != int(score >= 0.5):
        return f"entity {entity_id}: inconsistent answer score={score} class={predicted}"
    if str(body.get("model_version")) != version:
        return f"entity {entity_id}: model version {body.get('model_version')}, expected {version}"
    return None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
