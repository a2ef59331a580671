"""A real Prometheus server scrapes local servers found through file SD, and answers queries."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tests import prometheus_server as prom
from mlops_assets.monitoring.loop_metrics import read_loop_gauges_text, write_loop_gauges

pytestmark = pytest.mark.integration
LABELS = {"model_name": "churn", "role": "transformer"}


def contract_registry() -> CollectorRegistry:
    """A serving process's metrics, named as in CONTRACTS.md, with a known traffic history."""
    registry = CollectorRegistry()
    names = ["model_name", "revision", "role"]
    requests = Counter("mlops_requests_total", "Requests.", names + ["code"], registry=registry)
    errors = Counter("mlops_request_errors_total", "Errors.", names + ["code"], registry=registry)
    latency = Histogram("mlops_request_latency_seconds", "Latency.", names, registry=registry)
    version = Gauge("mlops_model_version_info", "Model version.", names + ["model_version"], registry=registry)
    requests.labels(revision="stable", code="200", **LABELS).inc(40)
    requests.labels(revision="canary", code="200", **LABELS).inc(7)
    requests.labels(revision="canary", code="500", **LABELS).inc(3)
    errors.labels(revision="canary", code="500", **LABELS).inc(3)
    latency.labels(revision="canary", **LABELS).observe(0.02)
    version.labels(revision="canary", model_version="4", **LABELS).set(1)
    return registry


@pytest.fixture
def serving_metrics_target() -> Iterator[str]:
    """A prometheus_client exporter on a free loopback port, like one serving process."""
    port = prom.free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=contract_registry())
    yield f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def ingress_target(settings) -> Iterator[str]:
    """A stand-in for the ingress /metrics: it serves the loop gauges textfile as it is now."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = read_loop_gauges_text(settings).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def values_by(series: list[dict], label: str) -> dict[str, float]:
    return {s["metric"][label]: prom.sample_value(s) for s in series}


def test_prometheus_scrapes_file_sd_targets_and_answers_queries(
        settings, prometheus_server_factory, serving_metrics_target, ingress_target) -> None:
    started = time.monotonic()
    write_loop_gauges(settings, drift_share=0.4, drifted_columns=2, accuracy=0.81)
    config = prom.write_runtime_config(settings, interval="1s", ingress_target=ingress_target)
    server = prometheus_server_factory(config)
    assert server.url.startswith("http://127.0.0.1:")
    assert server.query("up") == []  # nothing in the file-SD file yet

    # The serving backend registers its servers after Prometheus is up, as on a rollout.
    prom.write_targets_file(prom.targets_file(settings), [serving_metrics_target], {"env": "local-test"})

    requests = server.wait_for_series('mlops_requests_total{revision="canary"}')
    assert values_by(requests, "code") == {"200": 7.0, "500": 3.0}
    assert {s["metric"]["job"] for s in requests} == {prom.SERVING_JOB}
    assert {s["metric"]["env"] for s in requests} == {"local-test"}  # labels from the file-SD group
    assert {s["metric"]["instance"] for s in requests} == {serving_metrics_target}

    version = server.wait_for_series("mlops_model_version_info")
    assert version[0]["metric"]["model_version"] == "4"
    buckets = server.query('mlops_request_latency_seconds_count{revision="canary"}')
    assert [prom.sample_value(s) for s in buckets] == [1.0]

    drift = server.wait_for_series("mlops_drift_share")
    assert [(s["metric"]["job"], prom.sample_value(s)) for s in drift] == [(prom.INGRESS_JOB, 0.4)]

    # The committed rules are loaded and evaluated against the scraped series: drift at 40% is
    # over the 30% threshold, so MLOpsDataDrift is pending (its `for` is 1m).
    alerts = server.wait_for_series('ALERTS{alertname="MLOpsDataDrift"}')
    assert alerts[0]["metric"]["severity"] == "warning"
    assert alerts[0]["metric"]["model_name"] == "churn"

    assert time.monotonic() - started < 30


def test_query_errors_name_the_problem(settings, prometheus_server_factory) -> None:
    server = prometheus_server_factory(prom.write_runtime_config(settings, interval="1s"))
    with pytest.raises(prom.PrometheusError, match="bad_data"):
        server.query("sum(")


def test_stop_ends_the_process_and_removes_its_storage(settings, prometheus_bin) -> None:
    server = prom.start_prometheus(prom.write_runtime_config(settings, interval="1s"))
    storage = server.storage_dir
    assert storage.exists()
    server.stop()
    assert server.process.returncode is not None
    assert not storage.exists()


def test_a_broken_config_fails_start_up_with_the_log(tmp_path, prometheus_bin) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: not-a-duration\n")
    try:
        server = prom.start_prometheus(config, ready_timeout=15)
    except prom.PrometheusError as error:
        assert "exited with code" in str(error)
        assert "not-a-duration" in str(error)  # the log tail says what was wrong
    else:
        server.stop()
        pytest.fail("prometheus started with an invalid config")


def test_a_taken_port_is_retried_on_another(settings, prometheus_bin, monkeypatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = prom.free_port
        monkeypatch.setattr(prom, "free_port", lambda: next(ports, None) or real_free_port())
        with prom.start_prometheus(prom.write_runtime_config(settings, interval="1s")) as server:
            assert server.port != taken
            assert server.query("vector(1)")[0]["value"][1] == "1"
