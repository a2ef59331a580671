"""Serving is independent of the process that started it (the session deployment was launched by a
short-lived process that imported Feast and exited, see conftest.LAUNCHER)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _processes(state: dict) -> list[tuple[str, int, str]]:
    """(role, pid, url) of the ingress and of every replica's predictor and transformer."""
    found = [("ingress", state["ingress"]["pid"], state["endpoint"])]
    for name, revision in state["revisions"].items():
        for replica in revision["replicas"]:
            for role in ("predictor", "transformer"):
                found.append((f"{name} {role}", replica[role]["pid"], replica[role]["url"]))
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_the_launcher_is_gone_and_so_is_its_feast_state(launched):
    assert launched["multiproc_dir"] and not Path(launched["multiproc_dir"]).exists()


def test_a_thousand_requests_succeed_after_the_launcher_exited(world, deployment):
    url = deployment.predict_url()
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(4) as pool:
        def post(i: int) -> tuple[int, str]:
            response = client.post(url, json={"instances": [{"customer_id": 1 + i % 1500}]},
                                   headers={"x-request-id": f"launcher-{i}"})
            return response.status_code, response.text[:200]

        answers = list(pool.map(post, range(1000)))
    failures = [answer for answer in answers if answer[0] != 200]
    assert failures == [], failures[:3]


def test_every_serving_process_has_its_own_environment_and_answers_metrics(world, deployment):
    state = deployment.backend.status()
    processes = _processes(state)
    assert len(processes) == 1 + 2 * 2 * world.settings.serving_replicas  # ingress + 2 revisions x replicas
    run_dir = world.settings.serving_dir / "run"
    for role, pid, url in processes:
        environ = _environ(pid)
        assert "PROMETHEUS_MULTIPROC_DIR" not in environ, role
        assert environ["MLOPS_HOME"] == str(world.settings.home), role
        assert Path(os.readlink(f"/proc/{pid}/cwd")) == run_dir, role
        metrics = httpx.get(f"{url}/metrics", timeout=10)
        assert metrics.status_code == 200 and "mlops_" in metrics.text, (role, metrics.text[:300])
    ingress = state["ingress"]["pid"]
    assert os.getsid(ingress) == ingress  # a session leader: no terminal or process group ties it to a caller


def test_ingress_errors_are_json(deployment):
    with httpx.Client(timeout=10) as client:
        for response in (client.get(f"{deployment.endpoint}/admin/nothing"),
                         client.post(f"{deployment.endpoint}/admin/traffic", content=b"[1]"),
                         client.post(f"{deployment.endpoint}/admin/traffic", json={"percent": 101})):
            assert 400 <= response.status_code < 500 and response.json()["error"], response.text
