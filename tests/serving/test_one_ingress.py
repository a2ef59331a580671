"""One local ingress for every model of the code location (issue 13): routes by the model a path
names, answers a 404 naming the served models otherwise, refuses admin calls without a known model,
and is started once even when two models' launchers race for it. (Serving two models' real
revisions through it, and stopping one while the other serves: tests/loop/test_two_models.py.)"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mlops_assets.serving.backend_local import LocalServingBackend
from mlops_assets.serving.fleet import Fleet, index_path
from mlops_assets.serving.ingress import IngressApp, model_of
from mlops_assets.settings import PROJECT_ROOT, base_settings, get_settings

MODELS_DIR = str(PROJECT_ROOT / "examples" / "models")


@pytest.mark.parametrize("path, model", [
    ("/v1/models/churn:predict", "churn"), ("/v1/models/tumor:explain", "tumor"), ("/v1/models/churn", "churn"),
    ("/v2/models/tumor/infer", "tumor"), ("/v2/models/tumor/versions/2/infer", "tumor"), ("/v2/models/churn", "churn"),
    ("/v1/models/", None), ("/v1/models/:predict", None), ("/v2/models//infer", None), ("/predict", None),
    ("/v3/models/churn/infer", None), ("/", None)])
def test_the_model_is_read_from_the_kserve_path(path, model):
    assert model_of(path) == model


def _ask(app: IngressApp, calls: list[tuple[str, str, dict | None]]) -> list[httpx.Response]:
    async def run():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]

    return asyncio.run(run())


def test_paths_and_admin_calls_without_a_known_model_get_clear_errors(tmp_path):
    base = base_settings({"MLOPS_HOME": str(tmp_path), "MLOPS_MODELS_DIR": MODELS_DIR})
    app = IngressApp(Fleet(port=1, max_request_bytes=1 << 20, base=base))
    answers = _ask(app, [
        ("POST", "/v1/models/tumor:predict", {"instances": [{"patient_id": 1}]}),
        ("POST", "/predict", {"instances": []}),
        ("GET", "/v1/models", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/health/live", None),
        ("POST", "/admin/deploy", {"model_version": "1"}),
        ("POST", "/admin/deploy", {"model": "nosuch", "model_version": "1"}),
        ("POST", "/admin/promote", {"model": "tumor"}),
        ("GET", "/admin/state?model=churn", None),
        ("POST", "/admin/reboot", {"model": "churn"}),
        ("POST", "/admin/deploy", {"model": "tumor", "mode": "blue-green"}),
        ("POST", "/admin/deploy", {"model": "tumor", "percent": 120}),
        ("POST", "/admin/deploy", {"model": "tumor", "gate": "strict"}),
    ])
    codes = [answer.status_code for answer in answers]
    assert codes == [404, 404, 200, 503, 200, 400, 404, 404, 404, 404, 400, 400, 400], [a.text for a in answers]
    assert all(answer.headers["content-type"] == "application/json" for answer in answers)
    not_served, no_route, listed, not_ready, _, no_model, unknown, not_deployed, no_state, _, mode, percent, gate = (
        answer.json() for answer in answers)
    assert "mode" in mode["error"] and "percent" in percent["error"] and "gate" in gate["error"]
    assert "'tumor' is not served here" in not_served["error"]
    assert "/v1/models/<name>" in no_route["error"] and "/v2/models/<name>" in no_route["error"]
    assert listed == {"models": []} and not_ready["ready"] is False
    assert "needs the model" in no_model["error"]
    # the catalog's own message: which models there are
    assert "'nosuch'" in unknown["error"] and "churn" in unknown["error"] and "tumor" in unknown["error"]
    assert "'tumor' is not served here" in not_deployed["error"] and "'churn'" in no_state["error"]
    assert app.fleet.controllers == {}  # nothing was started by any of them
    assert not index_path(base).exists()


def test_two_launchers_at_once_start_one_ingress_that_serves_both_models(tmp_path):
    env = {"MLOPS_HOME": str(tmp_path), "MLOPS_MODELS_DIR": MODELS_DIR, "MLOPS_SERVING_STANDBY": "0"}
    backends = [LocalServingBackend(get_settings({**env, "MLOPS_MODEL_NAME": name})) for name in ("churn", "tumor")]
    try:
        with ThreadPoolExecutor(2) as pool:
            states = list(pool.map(lambda backend: backend.start(), backends))
        assert [state["model_name"] for state in states] == ["churn", "tumor"]
        assert states[0]["endpoint"] == states[1]["endpoint"]
        assert states[0]["ingress"]["pid"] == states[1]["ingress"]["pid"]
        index = backends[0]._read_index()
        assert index["pid"] == states[0]["ingress"]["pid"] and set(index["models"]) == {"churn", "tumor"}
        # each model's state file in its own folder, naming the shared ingress
        for backend, state in zip(backends, states):
            assert backend.state_path.parent == backend.settings.home / "models" / state["model_name"] / "serving"
            assert backend.status()["ingress"]["pid"] == index["pid"]
        listed = httpx.get(f"{index['endpoint']}/v1/models", timeout=5).json()
        assert listed == {"models": ["churn", "tumor"]}
        # nothing deployed yet: a request is answered 503 naming that, not proxied anywhere
        answer = httpx.post(f"{index['endpoint']}/v1/models/tumor:predict", json={"instances": [{"patient_id": 1}]},
                            timeout=5)
        assert answer.status_code == 503 and "no revision" in answer.json()["error"]

        # stopping one model leaves the ingress (and the other model's route) up
        backends[1].stop()
        assert os.path.exists(f"/proc/{index['pid']}")
        assert httpx.get(f"{index['endpoint']}/v1/models", timeout=5).json() == {"models": ["churn"]}
        assert backends[1].status()["running"] is False and backends[0].status()["running"] is True
        backends[0].stop()  # the last model: the ingress stops too
        assert not os.path.exists(f"/proc/{index['pid']}") or _zombie(index["pid"])
        assert backends[0]._read_index()["running"] is False

        # `mlops stop`: every model and the ingress, whatever is still served
        again = [backend.start() for backend in backends]
        assert again[0]["ingress"]["pid"] == again[1]["ingress"]["pid"] != index["pid"]
        backends[1].stop(every_model=True)
        assert not os.path.exists(f"/proc/{again[0]['ingress']['pid']}") or _zombie(again[0]["ingress"]["pid"])
        assert [backend.status()["running"] for backend in backends] == [False, False]
    finally:
        backends[0].stop(every_model=True)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")", 1)[1].split()[0] == "Z"
