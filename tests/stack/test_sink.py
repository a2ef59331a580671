"""The prediction-log sink against real S3: KServe CloudEvents in (request and response joined by
ce-id), 400 on malformed events, labels over HTTP, an ack only after the object exists, and the
serving side's buffer losing nothing while the sink restarts under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from mlops_assets.monitoring.object_log import EVENTS, KSERVE_REQUEST, KSERVE_RESPONSE, ObjectLog
from mlops_assets.monitoring.prediction_log import read_prediction_log
from mlops_assets.monitoring.sink_client import SinkPredictionLog
from mlops_assets.monitoring.stores import StackMonitoring
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.stack.services import free_ports
from tests.stack.conftest import stack_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(stack, tmp_path, monkeypatch):
    settings = stack_settings(stack, tmp_path)
    for name, value in settings.s3_client_env().items():
        monkeypatch.setenv(name, value)
    return settings


def kserve_headers(event_id: str, kind: str) -> dict:
    return {"ce-id": event_id, "ce-type": kind, "ce-source": "http://localhost:9081/",
            "ce-specversion": "1.0", "ce-time": datetime.now(timezone.utc).isoformat(),
            "ce-component": "predictor", "ce-inferenceservicename": "churn", "content-type": "application/json"}
# every record these tests write is about the model `churn`; the stack demo's model reads none of them


def window(settings, **kwargs):
    now = datetime.now(timezone.utc)
    return read_prediction_log(StackMonitoring(settings), now - timedelta(hours=1), now + timedelta(minutes=1), **kwargs)


def test_kserve_request_and_response_events_become_one_record(stack, settings):
    event_id = uuid.uuid4().hex
    sink = stack.url("sink")
    before = len(ObjectLog.from_settings(settings).keys(EVENTS))
    request = httpx.post(f"{sink}/events", headers=kserve_headers(event_id, KSERVE_REQUEST),
                         json={"instances": [{"customer_id": 42, "tenure_months": 3.0}]})
    assert request.status_code == 202, request.text
    # acknowledged means written: the object is there now
    assert len(ObjectLog.from_settings(settings).keys(EVENTS)) == before + 1
    log, _ = window(settings, with_labels=False)
    assert event_id not in set(log["request_id"])  # the response has not arrived yet
    response = httpx.post(f"{sink}/events", headers=kserve_headers(event_id, KSERVE_RESPONSE),
                          json={"predictions": [0.81], "model_version": "3"})
    assert response.status_code == 202
    log, _ = window(settings, with_labels=False)
    row = log[log["request_id"] == event_id].iloc[0]
    assert (row["entity_id"], row["score"], row["prediction"], row["model_version"], row["tenure_months"]) == (
        42, 0.81, 1, "3", 3.0)


@pytest.mark.parametrize("headers, body, reason", [
    ({"content-type": "application/json"}, b'{"instances": []}', "missing ce-id, ce-source, ce-specversion, ce-type"),
    ({**kserve_headers("x", KSERVE_REQUEST), "ce-specversion": "0.3"}, b"{}", "specversion"),
    (kserve_headers("x", "com.example.other"), b"{}", "unknown event type"),
    (kserve_headers("x", KSERVE_REQUEST), b"{not json", "not JSON"),
    (kserve_headers("x", KSERVE_REQUEST), b"[1, 2]", "must be a JSON object"),
    ({"content-type": "application/cloudevents+json"}, b'{"id": "1", "type": "t"}', "missing ce-source"),
])
def test_a_malformed_cloudevent_gets_400_naming_the_problem(stack, headers, body, reason):
    response = httpx.post(f"{stack.url('sink')}/events", headers=headers, content=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_structured_mode_events_are_accepted(stack, settings):
    rid = uuid.uuid4().hex
    event = {"specversion": "1.0", "id": rid, "source": "test", "type": "org.mlops.prediction.log",
             "inferenceservicename": "churn",
             "data": [{"request_id": rid, "ts": datetime.now(timezone.utc).isoformat(), "entity_id": 7,
                       "features": {"customer_id": 7, "x": 1.5}, "score": 0.2, "prediction": 0,
                       "model_version": "1", "revision": "stable"}]}
    response = httpx.post(stack.url("sink"), json=event, headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 202
    log, _ = window(settings, with_labels=False)
    assert rid in set(log["request_id"])


def test_labels_posted_by_request_id_or_entity_and_time_join_the_log(stack, settings):
    now = datetime.now(timezone.utc)
    ids = [uuid.uuid4().hex for _ in range(2)]
    entity = int(uuid.uuid4().int % 10**9)
    client = SinkPredictionLog(stack.url("sink"), source="test", model="churn")
    client.append([{"request_id": ids[0], "ts": now.isoformat(), "entity_id": 1, "features": {"customer_id": 1},
                    "score": 0.9, "prediction": 1, "model_version": "1", "revision": "stable"},
                   {"request_id": ids[1], "ts": (now - timedelta(minutes=5)).isoformat(), "entity_id": entity,
                    "features": {"customer_id": entity}, "score": 0.1, "prediction": 0, "model_version": "1",
                    "revision": "stable"}])
    assert client.flush(30)
    labels = {"labels": [{"request_id": ids[0], "label": 1},
                         {"entity_id": entity, "ts": now.isoformat(), "label": 1}]}
    assert httpx.post(f"{stack.url('sink')}/labels", json=labels).json() == {"stored": 2}
    log, stats = window(settings)
    joined = dict(zip(log["request_id"], log["label"]))
    assert joined[ids[0]] == 1 and joined[ids[1]] == 1
    bad = httpx.post(f"{stack.url('sink')}/labels", json={"labels": [{"entity_id": entity, "label": 1}]})
    assert bad.status_code == 400 and "labels[0] needs a request_id" in bad.json()["error"]


def test_the_sink_restarted_under_load_loses_no_acknowledged_prediction(stack, settings, tmp_path):
    """The serving side's buffer retries while the sink is down: every record appended is stored once."""
    port = free_ports(["sink"])["sink"]
    env = {**settings.env_for_subprocess(), "MLOPS_STACK_ENV": str(stack.env_file)}

    def start():
        process = subprocess.Popen([sys.executable, "-m", "mlops_assets.monitoring.sink", "--port", str(port)],
                                   cwd=PROJECT_ROOT, env=env, stdout=open(tmp_path / "sink.log", "ab"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return process
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError((tmp_path / "sink.log").read_text())

    process = start()
    client = SinkPredictionLog(f"http://127.0.0.1:{port}", source="load", model="churn", batch=50)
    run = uuid.uuid4().hex[:8]
    sent, stop = [], threading.Event()

    def load(worker: int):
        i = 0
        while not stop.is_set():
            rid = f"{run}-{worker}-{i}"
            client.append([{"request_id": rid, "ts": datetime.now(timezone.utc).isoformat(), "entity_id": i,
                            "features": {"customer_id": i}, "score": 0.5, "prediction": 1,
                            "model_version": "1", "revision": "stable"}])
            sent.append(rid)
            i += 1
            time.sleep(0.002)

    workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.5)
        os.killpg(process.pid, signal.SIGKILL)  # a crash, not a clean stop
        process.wait()
        time.sleep(1.5)
        process = start()
        time.sleep(1.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    try:
        assert client.flush(60), f"{client.pending} records never acknowledged"
        assert client.retries > 0  # the restart was noticed
        log, _ = window(settings, with_labels=False)
        stored = [rid for rid in log["request_id"] if rid.startswith(run)]
        assert len(sent) > 1000
        assert set(stored) == set(sent)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()


def test_each_model_reads_only_its_own_log(stack, settings):
    rid = uuid.uuid4().hex
    client = SinkPredictionLog(stack.url("sink"), source="test", model="another-model")
    client.append([{"request_id": rid, "ts": datetime.now(timezone.utc).isoformat(), "entity_id": 3,
                    "features": {"customer_id": 3}, "score": 0.4, "prediction": 0, "model_version": "1",
                    "revision": "stable"}])
    assert client.flush(30)
    log, _ = window(settings, with_labels=False)  # settings.model_name == "churn"
    assert rid not in set(log["request_id"])
