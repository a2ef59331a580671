"""A real Prometheus server scrapes the real local serving processes (file-SD targets written by
the backend, the ingress as a static target) and answers queries about them."""

from __future__ import annotations

import time

import httpx

from tests import prometheus_server as prom

from tests.serving.conftest import feature_row


def poll(server, promql: str, done, timeout: float = 20.0) -> list[dict]:
    """Query until ``done(series)``: targets join at their first scrape, not all at once."""
    deadline = time.monotonic() + timeout
    while True:
        series = server.query(promql)
        if done(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.5)


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
        served = poll(server, 'sum(mlops_requests_total{role="transformer", code="200"})',
                      lambda series: series and prom.sample_value(series[0]) >= sent)
        assert prom.sample_value(served[0]) >= sent
        roles = {"predictor", "transformer"}
        info = poll(server, "mlops_model_version_info", lambda series: {s["metric"]["role"] for s in series} == roles)
        assert {s["metric"]["role"] for s in info} == roles
        expected = set(world.versions.values())
        info = poll(server, 'mlops_model_version_info{role="predictor"}',
                    lambda series: {s["metric"]["model_version"] for s in series} == expected)
        assert {s["metric"]["model_version"] for s in info} == expected
        [split] = server.wait_for_series(f'mlops_canary_traffic_percent{{instance="{ingress}", job="{prom.INGRESS_JOB}"}}')
        assert prom.sample_value(split) == 20
        everywhere = server.query("mlops_canary_traffic_percent")
        assert {s["metric"]["instance"] for s in everywhere} == {ingress}, "model servers expose the ingress gauge"
