"""Fixtures for the k8s profile: a local S3-compatible server (moto), the Kubernetes API stand-in of
tests/deploy, and a stand-in for the InferenceService's URLs answering V1 predictions."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.deploy.conftest import JsonHandler, KubeStandIn, LoopbackServer, kube  # noqa: F401 (fixture)

CODE_IMAGE = "registry.example/mlops-code:1.2.3"
SERVING_IMAGE = "registry.example/mlops-serving:1.2.3"
AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
# read by boto3 / MLflow / s3fs from the environment; the tests decide each one explicitly
S3_ENV_NAMES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE",
                "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on 127.0.0.1, a free port: a real S3 HTTP API for boto3, s3fs, DVC, MLflow."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Test credentials for the moto server; nothing of the developer's AWS setup leaks in, and
    whatever the product exports during the test is undone afterwards."""
    for name in S3_ENV_NAMES:
        monkeypatch.setenv(name, "")  # registers the undo, so exports made by the code are removed too
        monkeypatch.delenv(name)
    for name, value in AWS_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def bucket(s3_server, aws_env) -> str:
    import boto3

    name = f"mlops-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def k8s_env(home, bucket: str = "bucket", **extra: str) -> dict[str, str]:
    """Every setting the k8s profile needs, as the environment of a code-location pod would hold."""
    return {"MLOPS_PROFILE": "k8s", "MLOPS_HOME": str(home), "MLOPS_S3_BUCKET": bucket,
            "MLFLOW_TRACKING_URI": "http://mlflow.mlops.svc:5000", "MLOPS_K8S_NAMESPACE": "ml-prod",
            "MLOPS_CODE_IMAGE": CODE_IMAGE, "MLOPS_SERVING_IMAGE": SERVING_IMAGE,
            "MLOPS_K8S_SERVICE_ACCOUNT": "deployer-sa",
            **extra}


class ServiceStandIn(LoopbackServer):
    """What the InferenceService's URLs answer: ``/<route>/v1/models/<name>[:predict]`` where route is
    ``main`` (status.url), ``latest`` or ``prev`` (tagged revision URLs). ``versions[route]`` is the
    model version each answers with; every request is recorded with the number of Kubernetes API
    requests made before it, so a test can place it in the API sequence."""

    def __init__(self, kube: KubeStandIn):
        self.kube = kube
        self.requests: list[dict] = []
        self.versions: dict[str, str] = {}
        super().__init__()

    def url(self, route: str) -> str:
        return f"{self.base_url}/{route}"

    def _handler(self):
        stand_in = self

        class Handler(JsonHandler):
            def _serve(self, body: bytes):
                route, _, rest = self.path.lstrip("/").partition("/")
                stand_in.requests.append({"method": self.command, "route": route, "path": "/" + rest,
                                          "body": json.loads(body) if body else None,
                                          "after_api_requests": len(stand_in.kube.requests)})
                version = stand_in.versions.get(route)
                if version is None:
                    return self._reply(404, {"error": f"no revision behind /{route}"})
                if self.command == "GET":
                    return self._reply(200, {"name": "churn", "ready": True})
                payload = json.loads(body)
                (instance,) = payload["instances"]
                score = 0.25 if int(next(iter(instance.values()))) % 2 else 0.75
                return self._reply(200, {"predictions": [score], "classes": [int(score >= 0.5)],
                                         "model_version": version})

            def do_GET(self):
                self._serve(b"")

            def do_POST(self):
                self._serve(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        return Handler


@pytest.fixture
def service(kube):
    with ServiceStandIn(kube) as stand_in:
        yield stand_in
