"""A real Prometheus server scrapes the real local serving processes (file-SD targets written by
the backend, the ingress as a static target) and answers queries about them."""

from __future__ import annotations

import time

import httpx

from mlops_assets.monitoring import prometheus as prom

from tests.serving.conftest import feature_row


def wait_for_total(server, promql: str, at_least: float, timeout: float = 20.0) -> float:
    deadline, value = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        series = server.query(promql)
        value = prom.sample_value(series[0]) if series else 0.0
        if value >= at_least:
            break
        time.sleep(0.5)
    return value


def test_prometheus_scrapes_the_local_servers(world, deployment):
    sent = 40
    with httpx.Client(timeout=10) as client:
        for i in range(sent):
            response = client.post(deployment.predict_url(), json={"instances": [feature_row(world, i)]})
            assert response.status_code == 200
    ingress = deployment.endpoint.removeprefix("http://")
    config = prom.write_runtime_config(world.settings, interval="1s", ingress_target=ingress)
    with prom.start_prometheus(config) as server:
        # every target (stable and canary transformers) scraped: the sum reaches what was sent
        assert wait_for_total(server, 'sum(mlops_requests_total{role="transformer", code="200"})', sent) >= sent
        roles = {s["metric"]["role"] for s in server.wait_for_series('mlops_model_version_info')}
        assert roles == {"predictor", "transformer"}
        versions = {s["metric"]["model_version"] for s in server.query('mlops_model_version_info{role="predictor"}')}
        assert versions == set(world.versions.values())
        [split] = server.wait_for_series(f'mlops_canary_traffic_percent{{instance="{ingress}", job="{prom.INGRESS_JOB}"}}')
        assert prom.sample_value(split) == 20
