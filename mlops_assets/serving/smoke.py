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
                   max_error_rate: float = 0.0, max_p99_ms: float = 250.0, max_p99_ratio: float = 2.0) -> dict:
    """Send ``n_requests`` to ``revision``; the result says ``passed`` and carries the figures.

    Latency passes when the server-side p99 is within ``max_p99_ms``, or, for a canary, within
    ``max_p99_ratio`` times the stable revision's p99 measured in the same test (the same requests,
    interleaved): a loaded machine slows both alike, a slow model only the canary. ``max_p99_ratio=0``:
    the absolute limit only."""
    settings = settings or get_settings()
    state = LocalServingBackend(settings).status()
    revisions = state.get("revisions") or {}
    target = revisions.get(revision)
    if not state.get("running") or target is None:
        return {"passed": False, "revision": revision, "reason": f"no running {revision} revision"}
    baseline = revisions.get("stable") if revision != "stable" and max_p99_ratio > 0 else None
    ids = list(entity_ids) if entity_ids else default_entity_ids(settings)
    entity = settings.dataset_spec().entity
    instances = [{entity: ids[i % len(ids)]} for i in range(n_requests)]
    # a few requests first, not judged: a process's first answers pay one-off costs (lazy imports,
    # the first online-store read, connection set-up) that say nothing about how it serves
    warm_up = [{entity: ids[i % len(ids)]} for i in range(WARM_UP_REQUESTS)]
    served = {revision: target, **({"stable": baseline} if baseline is not None else {})}
    for name, one in served.items():
        send_checked_requests(_predict_url(one, state), name, warm_up, str(one["model_version"]))
    before = {name: scrape(one["transformer"]["url"]) for name, one in served.items()}
    answers: dict[str, list[dict]] = {name: [] for name in served}
    for start in range(0, n_requests, 10):  # interleaved: both revisions see the same moments of load
        chunk = instances[start:start + 10]
        for name, one in served.items():
            answers[name].append(_send(_predict_url(one, state), name, chunk, str(one["model_version"])))
    figures = {name: _server_figures(before[name], scrape(one["transformer"]["url"]),
                                     {"revision": name, "role": "transformer"}) for name, one in served.items()}
    requests, errors, p99 = figures[revision]
    result = {"revision": revision, "model_version": str(target["model_version"]), **_merge(answers[revision]),
              "server_requests": int(requests), "server_error_rate": (errors / requests) if requests else None,
              "server_p99_latency_ms": p99}
    if baseline is not None:
        result["stable_p99_latency_ms"] = figures["stable"][2]
        result["stable_failed_requests"] = _merge(answers["stable"])["failed_requests"]
    stable_p99 = result.get("stable_p99_latency_ms")
    result["checks"] = {
        "all_answers_valid": not result["failed_requests"],
        "server_saw_requests": requests >= n_requests,
        "error_rate_ok": requests > 0 and errors / requests <= max_error_rate,
        "latency_ok": p99 is not None and (p99 <= max_p99_ms or (
            stable_p99 is not None and p99 <= max_p99_ratio * stable_p99)),
    }
    result["passed"] = all(result["checks"].values())
    return result


def _predict_url(revision: dict, state: dict) -> str:
    return f"{revision['transformer']['url']}/v1/models/{state['model_name']}:predict"


def _server_figures(before: dict, after: dict, labels: dict) -> tuple[float, float, float | None]:
    """(requests, errors, p99 ms) a transformer counted between two scrapes."""
    requests = _sum(after, "mlops_requests_total", **labels) - _sum(before, "mlops_requests_total", **labels)
    errors = _sum(after, "mlops_request_errors_total", **labels) - _sum(before, "mlops_request_errors_total", **labels)
    return requests, errors, _ms(histogram_quantile(before, after, "mlops_request_latency_seconds", 0.99, **labels))


def _merge(parts: list[dict]) -> dict:
    """One answer summary from several :func:`_send` calls (client p50/p99 over all of them)."""
    latencies = sorted(ms for part in parts for ms in part["latencies_ms"])
    return {"requests": sum(part["requests"] for part in parts),
            "failed_requests": sum(part["failed_requests"] for part in parts),
            "problems": [problem for part in parts for problem in part["problems"]][:5],
            "client_p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "client_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)
            if latencies else None}


def send_checked_requests(predict_url: str, revision: str, instances: Sequence[dict], version: str) -> dict:
    """One V1 request per instance, each answer checked; the counts, first problems and client latency."""
    return _merge([_send(predict_url, revision, instances, version)])


def _send(predict_url: str, revision: str, instances: Sequence[dict], version: str) -> dict:
    latencies, problems = [], []
    with httpx.Client(timeout=10.0) as client:
        for instance in instances:
            started = time.perf_counter()
            problem = _check_one(client, predict_url, revision, instance, version)
            latencies.append((time.perf_counter() - started) * 1000)
            if problem:
                problems.append(problem)
    return {"requests": len(instances), "failed_requests": len(problems), "problems": problems[:5],
            "latencies_ms": latencies}


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
