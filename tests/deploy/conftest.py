"""Fixtures for the k8s-profile tests: upstream CRD schemas, kustomize builds, a Kubernetes API stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from mlops_assets.settings import PROJECT_ROOT

DEPLOY_DIR = PROJECT_ROOT / "deploy"


def crd_dir() -> Path:
    return Path(os.environ.get("MLOPS_CRD_DIR") or PROJECT_ROOT.parent / "shared" / "schemas" / "crds")


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, from every CRD file in the CRD folder."""
    folder = crd_dir()
    files = sorted(folder.glob("*.yaml"))
    assert files, f"no CRDs in {folder} (set MLOPS_CRD_DIR)"
    schemas = {}
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is needed for `kubectl kustomize` (Debian: kubernetes-client, or the kubectl package)"
    return path


def kustomize(kubectl: str, directory: Path) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler base for the stand-ins: quiet, and answers JSON."""

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 for a test stand-in; subclasses give ``_handler()``."""

    def __init__(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _handler(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class KubeStandIn(LoopbackServer):
    """A tiny Kubernetes API for InferenceServices: records every request, serves one object.

    ``status_for(obj, gets_since_apply)`` decides the status the next GET reports, so a test can
    script ready / not ready / never ready.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.object: dict | None = None
        self.status_for = lambda obj, polls: {}
        self.polls_since_apply = 0
        self.fail_with: tuple[int, dict] | None = None
        super().__init__()

    @property
    def url(self) -> str:
        return self.base_url

    def seed(self, obj: dict, generation: int = 1) -> None:
        self.object = {**obj, "metadata": {**obj["metadata"], "generation": generation,
                                           "resourceVersion": "100", "uid": "u-1",
                                           "managedFields": [{"manager": "someone"}]}}

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]

    def _handler(self):
        stand_in = self

        class Handler(JsonHandler):
            def _record(self, body: bytes) -> None:
                parts = urlsplit(self.path)
                stand_in.requests.append({
                    "method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                    "content_type": self.headers.get("Content-Type"),
                    "authorization": self.headers.get("Authorization"), "body": body.decode()})

            def do_GET(self):
                self._record(b"")
                if stand_in.fail_with:
                    return self._reply(*stand_in.fail_with)
                if stand_in.object is None:
                    return self._reply(404, {"kind": "Status", "reason": "NotFound", "code": 404})
                stand_in.polls_since_apply += 1
                status = stand_in.status_for(stand_in.object, stand_in.polls_since_apply)
                self._reply(200, {**stand_in.object, "status": status})

            def do_PATCH(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._record(body)
                if stand_in.fail_with:
                    return self._reply(*stand_in.fail_with)
                applied = yaml.safe_load(body)
                generation = (stand_in.object or {}).get("metadata", {}).get("generation", 0) + 1
                applied["metadata"] = {**applied["metadata"], "generation": generation}
                stand_in.object = applied
                stand_in.polls_since_apply = 0
                self._reply(200, applied)

        return Handler


@pytest.fixture
def kube():
    with KubeStandIn() as stand_in:
        yield stand_in
