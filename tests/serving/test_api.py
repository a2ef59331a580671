"""Serving over HTTP against real processes: predictions, protocols, bad input, logs and metrics."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.serving.conftest import feature_row

pytestmark = pytest.mark.integration


def test_v1_and_v2_predictions_equal_in_process_predict_proba(world, deployment, pipelines):
    spec = world.settings.dataset_spec()
    rows = world.data[spec.features].iloc[:25]
    expected = pipelines[world.versions["stable"]].predict_proba(rows)[:, 1]
    predictor = deployment.revision("stable")["predictor"]["url"]

    v1 = httpx.post(f"{predictor}/v1/models/churn:predict", json={"instances": rows.to_dict("records")})
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=0, atol=1e-9)
    assert v1.json()["classes"] == (expected >= 0.5).astype(int).tolist()

    v2 = httpx.post(f"{predictor}/v2/models/churn/infer", json=v2_request(rows, spec))
    assert v2.status_code == 200, v2.text
    outputs = {output["name"]: output["data"] for output in v2.json()["outputs"]}
    np.testing.assert_allclose(outputs["score"], expected, rtol=0, atol=1e-9)
    assert v2.json()["model_version"] == world.versions["stable"]


def v2_request(rows, spec) -> dict:
    def datatype(name):
        return "BYTES" if name in spec.categorical else "INT64" if name in spec.integer else "FP64"

    return {"inputs": [{"name": name, "shape": [len(rows)], "datatype": datatype(name),
                        "data": rows[name].tolist()} for name in spec.features]}


def test_entity_ids_through_ingress_use_online_features(world, deployment, pipelines):
    spec = world.settings.dataset_spec()
    ids = [3, 17, 256]
    response = httpx.post(deployment.predict_url(), json={"instances": [{spec.entity: i} for i in ids]})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = pipelines[body["model_version"]].predict_proba(world.latest.loc[ids, spec.features])[:, 1]
    np.testing.assert_allclose(body["predictions"], expected, rtol=0, atol=1e-9)
    assert body["revision"] in ("stable", "canary") and len(body["request_ids"]) == 3


def test_kserve_rest_client_speaks_to_the_endpoints(world, deployment):
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    spec = world.settings.dataset_spec()
    rows = world.data[spec.features].iloc[:3]
    request = v2_request(rows, spec)
    inputs = [InferInput(item["name"], item["shape"], item["datatype"], item["data"]) for item in request["inputs"]]
    predictor = deployment.revision("stable")["predictor"]["url"]

    async def call():
        v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
        v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
        try:
            v2_answer = await v2.infer(predictor, InferRequest("churn", inputs), model_name="churn")
            v1_answer = await v1.infer(deployment.endpoint, {"instances": [{spec.entity: 5}]}, model_name="churn")
            return v2_answer, v1_answer
        finally:
            await v2._client.aclose()
            await v1._client.aclose()

    v2_answer, v1_answer = asyncio.run(call())
    assert [output.name for output in v2_answer.outputs] == ["score", "prediction"]
    assert len(v2_answer.outputs[0].data) == 3
    assert 0 <= v1_answer["predictions"][0] <= 1


def test_canary_share_is_within_three_points_of_twenty_percent(deployment):
    url = deployment.predict_url()
    with httpx.Client() as client, ThreadPoolExecutor(4) as pool:
        def revision(i: int) -> str:
            response = client.post(url, json={"instances": [{"customer_id": 1 + i % 1500}]})
            assert response.status_code == 200, response.text
            return response.json()["revision"]

        revisions = list(pool.map(revision, range(2000)))
    share = revisions.count("canary") / len(revisions)
    assert abs(share - 0.20) <= 0.03, share


def test_prediction_log_lines_follow_the_contract(world, deployment):
    from mlops_assets.serving.prediction_log import read_prediction_log

    spec = world.settings.dataset_spec()
    response = httpx.post(deployment.predict_url(), json={"instances": [{spec.entity: 42}]},
                          headers={"x-request-id": "log-check-1"})
    assert response.status_code == 200
    records = {record["request_id"]: record for record in read_prediction_log(world.settings.prediction_log_dir)}
    record = records["log-check-1"]
    assert set(record) == {"request_id", "ts", "entity_id", "features", "score", "prediction", "model_version",
                           "revision"}
    assert record["entity_id"] == 42 and set(record["features"]) == set(spec.features)
    assert record["score"] == response.json()["predictions"][0]
    assert record["model_version"] == response.json()["model_version"]


def test_prediction_log_rotates_by_size_and_keeps_lines_whole(tmp_path):
    from mlops_assets.serving.prediction_log import PredictionLog, read_prediction_log

    log = PredictionLog(tmp_path, max_bytes=500)
    for i in range(40):
        log.append([{"request_id": str(i), "score": 0.5}])
    log.close()
    files = sorted(tmp_path.glob("predictions-*.jsonl"))
    assert len(files) > 1 and all(path.read_bytes().endswith(b"\n") for path in files)
    assert [record["request_id"] for record in read_prediction_log(tmp_path)] == [str(i) for i in range(40)]


def _bad_inputs(row: dict) -> list[tuple[str, dict, int, str]]:
    """(case, request kwargs, expected status, words the error must contain)."""
    def raw(text: str) -> dict:
        return {"content": text.encode(), "headers": {"content-type": "application/json"}}

    return [
        ("malformed JSON", raw('{"instances": ['), 400, "malformed JSON"),
        ("wrong content type", {"content": b"customer_id=1", "headers": {"content-type": "text/plain"}}, 415,
         "Content-Type: application/json"),
        ("wrong shape", {"json": {"instances": {"customer_id": 1}}}, 400, "'instances' must be a list"),
        ("no instances", {"json": {"inputs": []}}, 400, "unexpected top-level keys ['inputs']"),
        ("missing feature", {"json": {"instances": [{k: v for k, v in row.items() if k != "contract"}]}}, 400,
         "missing features ['contract']"),
        ("extra feature", {"json": {"instances": [{**row, "favourite_colour": 1}]}}, 400,
         "unknown features ['favourite_colour']"),
        ("NaN", raw(json.dumps({"instances": [{**row, "monthly_charges": float("nan")}]})), 400, "malformed JSON"),
        ("infinity", raw(json.dumps({"instances": [{**row, "monthly_charges": float("inf")}]})), 400,
         "malformed JSON"),
        ("string for number", {"json": {"instances": [{**row, "monthly_charges": "50.0"}]}}, 400,
         "'monthly_charges' must be a number, got string"),
        ("boolean for number", {"json": {"instances": [{**row, "support_calls": True}]}}, 400,
         "'support_calls' must be a number, got boolean"),
        ("huge integer", {"json": {"instances": [{**row, "support_calls": 2 ** 64}]}}, 400,
         "'support_calls' is out of range"),
        ("unknown entity", {"json": {"instances": [{"customer_id": 987654321}]}}, 404, "unknown customer_id [987654321]"),
        ("empty instances", {"json": {"instances": []}}, 400, "'instances' is empty"),
        ("mixed kinds", {"json": {"instances": [{"customer_id": 1}, row]}}, 400, "differs in kind"),
        ("over size limit", raw('{"instances": [' + " " * (2 * 1024 * 1024) + "]}"), 413, "exceeds the limit"),
    ]


@pytest.mark.parametrize("target", ["ingress", "transformer", "predictor"])
def test_every_bad_input_gets_a_4xx_naming_the_problem(world, deployment, target):
    row = feature_row(world)
    base = deployment.endpoint if target == "ingress" else deployment.revision("stable")[target]["url"]
    url = deployment.predict_url(base)
    valid = {"json": {"instances": [row]}}
    with httpx.Client(timeout=30) as client:
        for case, request, status, words in _bad_inputs(row):
            if target == "predictor" and case in ("unknown entity", "mixed kinds"):
                continue  # entity ids are the transformer's business
            response = client.post(url, **request)
            assert response.status_code == status, (case, response.text)
            assert words in response.json()["error"], (case, response.text)
            assert client.post(url, **valid).status_code == 200, case
        unknown_model = client.post(f"{base}/v1/models/no-such-model:predict", **valid)
        assert unknown_model.status_code == 404 and "no-such-model" in unknown_model.json()["error"]
        assert client.post(url, **valid).status_code == 200


def test_bad_v2_requests_get_a_4xx(world, deployment):
    spec = world.settings.dataset_spec()
    good = v2_request(world.data[spec.features].iloc[:2], spec)
    predictor = deployment.revision("stable")["predictor"]["url"]
    url = f"{predictor}/v2/models/churn/infer"

    def changed(index: int, **fields) -> dict:
        request = json.loads(json.dumps(good))
        request["inputs"][index].update(fields)
        return request

    cases = [
        (changed(0, shape=[3]), 400, "has shape [3] for 2 values"),
        (changed(1, data=["x", "y"]), 400, "must be a number, got string"),
        (changed(1, datatype="BOOL"), 400, "has datatype BOOL"),
        ({"inputs": good["inputs"][1:]}, 400, "missing features ['tenure_months']"),
        ({"inputs": [{"name": "tenure_months"}]}, 422, "shape: Field required"),
    ]
    with httpx.Client() as client:
        for request, status, words in cases:
            response = client.post(url, json=request)
            assert response.status_code == status and words in response.json()["error"], response.text
        malformed = client.post(url, content=b"{", headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
        assert client.post(f"{predictor}/v2/models/nope/infer", json=good).status_code == 404
        assert client.post(url, json=good).status_code == 200


def test_explain_returns_shap_values_per_row(world, deployment):
    spec = world.settings.dataset_spec()
    response = httpx.post(f"{deployment.endpoint}/v1/models/churn:explain",
                          json={"instances": [{spec.entity: 7}, {spec.entity: 8}]}, timeout=60)
    assert response.status_code == 200, response.text
    explanations = response.json()["explanations"]
    assert len(explanations) == 2
    for explanation in explanations:
        assert set(explanation["shap_values"]) == set(spec.features)
        # Permutation SHAP is exact-additive: base + contributions = the model's score.
        total = explanation["base_value"] + sum(explanation["shap_values"].values())
        assert total == pytest.approx(explanation["score"], abs=1e-6)


CONTRACT_SERIES = ["request_preprocess_seconds", "request_predict_seconds", "request_postprocess_seconds",
                   "mlops_request_latency_seconds", "mlops_requests_total", "mlops_request_errors_total",
                   "mlops_predictions_total", "mlops_prediction_score", "mlops_model_version_info"]


def test_metrics_expose_every_documented_series(world, deployment):
    loop = world.settings.home / "metrics" / "loop.prom"
    loop.parent.mkdir(parents=True, exist_ok=True)
    loop.write_text('mlops_drift_share{model_name="churn"} 0.25\nmlops_model_roc_auc{model_name="churn"} 0.8\n')
    httpx.post(f"{deployment.endpoint}/v1/models/churn:explain", json={"instances": [{"customer_id": 9}]},
               timeout=60)
    stable = deployment.revision("stable")
    # The explain went to one of the revision's replicas: read them all.
    transformer = "".join(httpx.get(f"{r['transformer']['url']}/metrics").text for r in stable["replicas"])
    predictor = "".join(httpx.get(f"{r['predictor']['url']}/metrics").text for r in stable["replicas"])
    ingress = httpx.get(f"{deployment.endpoint}/metrics").text
    for name in CONTRACT_SERIES + ["mlops_feature_lookup_seconds"]:
        assert f"\n{name}" in transformer, name
    for name in CONTRACT_SERIES + ["request_explain_seconds"]:
        assert f"\n{name}" in predictor, name
    assert 'role="transformer"' in transformer and 'revision="stable"' in transformer
    from mlops_assets.serving.smoke import scrape

    version_info = {"model_name": "churn", "revision": "stable", "role": "predictor",
                    "model_version": stable["model_version"]}
    assert scrape(stable["predictor"]["url"])[("mlops_model_version_info", frozenset(version_info.items()))] == 1
    for name in ('mlops_ingress_requests_total{code="200",model_name="churn",',
                 'mlops_canary_traffic_percent{model_name="churn"} 20.0',
                 'mlops_drift_share{model_name="churn"} 0.25'):
        assert name in ingress, name
    targets = json.loads(deployment.backend.targets_path.read_text())
    labels = {(group["labels"].get("revision"), group["labels"]["role"]) for group in targets}
    assert {("stable", "predictor"), ("canary", "transformer"), (None, "ingress")} <= labels


def test_smoke_test_reads_figures_from_the_servers(world, deployment):
    from mlops_assets.serving.smoke import run_smoke_test

    result = run_smoke_test(world.settings, revision="canary", n_requests=30)
    assert result["passed"], result
    assert result["model_version"] == world.versions["canary"] and result["server_requests"] >= 30
    assert result["server_error_rate"] == 0
    # the stable revision is measured in the same test, on the same requests
    assert result["stable_p99_latency_ms"] > 0 and result["stable_failed_requests"] == 0


def test_smoke_latency_is_judged_against_the_stable_revision_measured_alongside(world, deployment):
    from mlops_assets.serving.smoke import run_smoke_test

    # an absolute limit no server meets: fails alone, passes when the canary is within 1000x stable
    absolute = run_smoke_test(world.settings, revision="canary", n_requests=20, max_p99_ms=0.001, max_p99_ratio=0)
    assert not absolute["checks"]["latency_ok"] and not absolute["passed"] and "stable_p99_latency_ms" not in absolute
    relative = run_smoke_test(world.settings, revision="canary", n_requests=20, max_p99_ms=0.001,
                              max_p99_ratio=1000)
    assert relative["checks"]["latency_ok"] and relative["passed"], relative
    assert relative["server_p99_latency_ms"] <= 1000 * relative["stable_p99_latency_ms"]
    # ...but not when the canary is slower than a (made-up) fraction of stable
    strict = run_smoke_test(world.settings, revision="canary", n_requests=20, max_p99_ms=0.001, max_p99_ratio=1e-6)
    assert not strict["checks"]["latency_ok"]


def test_predictor_that_cannot_load_never_reports_ready(world):
    from mlops_assets.serving.metrics import ServerMetrics
    from mlops_assets.serving.predictor import ChurnPredictor
    from mlops_assets.serving.server import build_app

    model = ChurnPredictor("churn", world.settings, model_version="999")
    assert model.load() is False and "999" in model.load_error
    app = build_app(model, ServerMetrics("churn", "predictor"), "stable")

    async def probe():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get("/v2/health/ready"), await client.get("/v1/models/churn"),
                    await client.post("/v1/models/churn:predict", json={"instances": [feature_row(world)]})]

    ready, model_ready, predict = asyncio.run(probe())
    assert ready.status_code == 503 and "999" in ready.json()["error"]
    assert model_ready.status_code == 503 and predict.status_code == 503


def test_v2_model_metadata_lists_the_signature_inputs_and_the_outputs(world, deployment):
    import mlflow

    version = world.versions["stable"]
    signature = mlflow.models.get_model_info(f"models:/{world.settings.model_name}/{version}").signature
    expected_types = {"long": "INT64", "integer": "INT64", "string": "BYTES", "double": "FP64", "float": "FP64"}
    expected = [{"name": column.name, "datatype": expected_types[str(column.type.name).lower()], "shape": [-1]}
                for column in signature.inputs.inputs]
    predictor = deployment.revision("stable")["predictor"]["url"]
    for base in (predictor, deployment.endpoint):
        metadata = httpx.get(f"{base}/v2/models/churn", timeout=10)
        assert metadata.status_code == 200, metadata.text
        assert metadata.json()["name"] == "churn"
        assert metadata.json()["inputs"] == expected
        assert metadata.json()["outputs"] == [{"name": "score", "datatype": "FP64", "shape": [-1]},
                                              {"name": "prediction", "datatype": "INT64", "shape": [-1]}]
    assert {item["name"] for item in expected} == set(world.settings.dataset_spec().features)


def test_every_predictor_warmed_its_explainer_before_it_reported_ready(deployment):
    for name in ("stable", "canary"):
        for replica in deployment.revision(name)["replicas"]:
            ready = httpx.get(f"{replica['predictor']['url']}/v2/health/ready", timeout=10).json()
            assert ready["ready"] is True and ready["explainer_warm"] is True, ready
