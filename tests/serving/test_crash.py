"""A serving process that dies costs no request: other replicas answer, and while a revision has no
ready replica the ingress holds requests until one is back (bounded, then a 503 naming it)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

RATE = 60  # requests per second, sent on a fixed schedule whatever the answers take (open loop)


class SteadyLoad:
    """Entity requests to the ingress at RATE per second (one event loop in a thread, each request
    started on schedule whatever the earlier ones take) until stopped; every failure is kept."""

    def __init__(self, url: str):
        self.url = url
        self.sent = 0
        self.ok = 0
        self.failures: list[str] = []
        self.rate = 0.0
        self.send_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _one(self, client: httpx.AsyncClient, i: int) -> None:
        try:
            response = await client.post(self.url, json={"instances": [{"customer_id": 1 + i % 1500}]})
            problem = None if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            problem = repr(exc)
        if problem is None:
            self.ok += 1
        else:
            self.failures.append(problem)

    async def _run(self) -> None:
        tasks = []
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            started = time.monotonic()
            while not self._stop.is_set():
                tasks.append(asyncio.create_task(self._one(client, self.sent)))
                self.send_times.append(time.monotonic())
                self.sent += 1
                await asyncio.sleep(max(0.0, started + self.sent / RATE - time.monotonic()))
            self.rate = self.sent / (time.monotonic() - started)
            await asyncio.gather(*tasks)

    def __enter__(self) -> "SteadyLoad":
        self._thread.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)
        self._stop.set()
        self._thread.join()

    def sent_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.send_times)


def _wait_until_restarted(backend, revision: str, replica: int, role: str, old_pid: int) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        child = backend.status()["revisions"][revision]["replicas"][replica][role]
        if child["pid"] != old_pid and child["ready"] and child["restart_to_ready_s"]:
            return child
        time.sleep(0.2)
    pytest.fail(f"{revision} {role} {replica} was not restarted within 120 s")


@pytest.mark.parametrize("role", ["predictor", "transformer"])
def test_kill_9_of_a_stable_process_under_load_fails_no_request(deployment, role):
    backend = deployment.backend
    victim = backend.status()["revisions"]["stable"]["replicas"][0][role]
    restarts = len(victim["restart_to_ready_s"])
    with SteadyLoad(deployment.predict_url()) as load:
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        child = _wait_until_restarted(backend, "stable", 0, role, victim["pid"])
        back = time.monotonic()
    during = load.sent_between(killed, back)
    print(f"\nkill -9 stable {role}: {load.sent} requests offered at {RATE}/s (achieved {load.rate:.0f}/s), "
          f"{during} while it was down, {len(load.failures)} failed; restart to ready "
          f"{child['restart_to_ready_s'][-1]:.2f} s")
    assert load.failures == [], load.failures[:3]
    assert load.ok == load.sent and during >= 50  # the load went on all through the outage
    assert child["port"] == victim["port"] and len(child["restart_to_ready_s"]) == restarts + 1


def test_requests_are_held_while_no_replica_of_the_revision_is_ready(deployment):
    """Every stable transformer killed at once: requests wait for a restart instead of failing."""
    backend = deployment.backend
    victims = [replica["transformer"] for replica in backend.status()["revisions"]["stable"]["replicas"]]
    with SteadyLoad(deployment.predict_url()) as load:
        for victim in victims:
            os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        restarted = [_wait_until_restarted(backend, "stable", index, "transformer", victim["pid"])
                     for index, victim in enumerate(victims)]
        during = load.sent_between(killed, time.monotonic())
    assert during >= 50
    print(f"\nkill -9 every stable transformer: {load.sent} requests ({during} while none was ready), "
          f"{len(load.failures)} failed; restart to "
          f"ready {[child['restart_to_ready_s'][-1] for child in restarted]} s")
    assert load.failures == [], load.failures[:3]


def test_a_revision_that_cannot_load_its_model_is_never_routed_to(world, deployment):
    from mlops_assets.serving.backend_local import ServingBackendError

    before = deployment.backend.status()
    with pytest.raises(ServingBackendError, match="999"):
        deployment.backend.deploy_canary("999", percent=50)
    after = deployment.backend.status()
    assert after["revisions"]["canary"]["model_version"] == before["revisions"]["canary"]["model_version"]
    assert after["canary_percent"] == before["canary_percent"]
    with httpx.Client(timeout=30) as client:
        versions = {client.post(deployment.predict_url(), json={"instances": [{"customer_id": i}]}).json()
                    ["model_version"] for i in range(1, 40)}
    assert versions == set(world.versions.values())


HOLD_CHECK = """
import asyncio, sys
from pathlib import Path
import httpx
from mlops_assets.serving.controller import Controller
from mlops_assets.serving.revision import Child, Replica, Revision
from mlops_assets.serving.fleet import Fleet
from mlops_assets.serving.ingress import IngressApp
from mlops_assets.settings import get_settings

async def call():
    home = Path(sys.argv[1])
    controller = Controller(get_settings({"MLOPS_HOME": str(home), "MLOPS_SERVING_HOLD_S": "0.3"}), "churn", 0, 1024)
    log = home / "unused.log"
    replica = Replica(0, Child("predictor", 1, [], log), Child("transformer", 2, [], log))
    controller.router.set(None, Revision("canary", "7", [replica], "now"), 100)
    fleet = Fleet(0, 1024, base=controller.settings)
    fleet.controllers["churn"] = controller
    app = IngressApp(fleet)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
        response = await client.post("/v1/models/churn:predict", json={"instances": [{"customer_id": 1}]})
    print(response.status_code, response.text)

asyncio.run(call())
"""


def test_hold_ends_in_a_503_naming_the_revision(world, tmp_path):
    """The ingress app (in a clean process) with a revision none of whose replicas is ready."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HOLD_CHECK, str(tmp_path)], env=world.settings.serving_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    status, _, body = done.stdout.strip().partition(" ")
    assert status == "503"
    assert "churn revision canary (model version 7) has no ready replica after waiting 0.3 s" in body
