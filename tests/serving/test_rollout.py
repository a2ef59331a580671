"""Canary rollout under load: promotion, rollback and a crashed canary never fail requests.

Runs after test_api.py (file order): it changes the shared deployment.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


class Load:
    """Threads posting entity requests to the ingress until stopped; failures are kept."""

    def __init__(self, url: str, threads: int = 3):
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.revisions: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = seed
            while not self._stop.is_set():
                i += 1
                try:
                    response = client.post(self.url, json={"instances": [{"customer_id": 1 + i % 1500}]})
                    if response.status_code == 200:
                        self.ok += 1
                        body = response.json()
                        self.revisions.add((body["revision"], body["model_version"]))
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_promotion_and_rollback_under_load_fail_no_request(world, deployment):
    backend, v1, v2 = deployment.backend, world.versions["stable"], world.versions["canary"]
    with Load(deployment.predict_url()) as load:
        promoted = backend.promote()
        assert promoted["revisions"]["stable"]["model_version"] == v2 and promoted["revisions"]["canary"] is None
        time.sleep(0.5)
        backend.deploy_canary(v1, percent=50)
        time.sleep(0.5)
        rolled_back = backend.rollback()
    assert load.failures == [] and load.ok > 50
    assert rolled_back["revisions"]["canary"] is None
    assert rolled_back["revisions"]["stable"]["model_version"] == v2
    assert {("stable", v1), ("canary", v2), ("stable", v2), ("canary", v1)} <= load.revisions


def test_killed_canary_predictor_is_restarted_without_failing_requests(world, deployment):
    backend = deployment.backend
    state = backend.deploy_canary(world.versions["stable"], percent=50)
    victim = state["revisions"]["canary"]["predictor"]
    with Load(deployment.predict_url()) as load:
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 300  # a restart loads the model and warms the explainer
        while time.monotonic() < deadline:
            canary = backend.status()["revisions"]["canary"]
            if canary is None or (canary["predictor"]["pid"] != victim["pid"] and _ready(canary["predictor"]["url"])):
                break
            time.sleep(0.5)
        else:
            pytest.fail("canary predictor was neither restarted nor rolled back")
        time.sleep(1.0)
    assert len(load.failures) <= 1, load.failures[:3]
    canary = backend.status()["revisions"]["canary"]
    if canary is not None:  # restarted on the same port: the canary answers again
        assert canary["predictor"]["port"] == victim["port"] and canary["predictor"]["restarts"] == 1
        direct = httpx.post(deployment.predict_url(canary["transformer"]["url"]),
                            json={"instances": [{"customer_id": 11}]})
        assert direct.status_code == 200 and direct.json()["revision"] == "canary"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
