"""Fixtures for the k8s-profile tests: upstream CRD schemas, kustomize builds, a Kubernetes API stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
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


API_GROUPS = {  # group/version -> (plural, kind) the stand-in serves
    "serving.kserve.io/v1beta1": ("inferenceservices", "InferenceService"),
    "argoproj.io/v1alpha1": ("applications", "Application"),
}
SHORT = {"inferenceservices": "isvc", "applications": "app"}
DISCOVERY = ("/version", "/api", "/apis", "/api/v1", *(f"/apis/{gv}" for gv in API_GROUPS))


def _discovery(path: str) -> dict | None:
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"]}
    if path == "/api/v1":
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": []}
    if path == "/apis":
        groups = []
        for gv in API_GROUPS:
            group, version = gv.split("/")
            entry = {"groupVersion": gv, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    gv = path.removeprefix("/apis/")
    if gv in API_GROUPS:
        plural, kind = API_GROUPS[gv]
        verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
        return {"kind": "APIResourceList", "groupVersion": gv, "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind, "verbs": verbs},
            {"name": f"{plural}/status", "singularName": "", "namespaced": True, "kind": kind,
             "verbs": ["get", "patch", "update"]}]}
    return None


class KubeStandIn(LoopbackServer):
    """A small Kubernetes API: discovery, GET, server-side apply (PATCH) and watches of namespaced
    InferenceServices and Argo CD Applications, as the official client speaks to a real one.

    ``status_for[plural](obj, reads)`` gives the status the ``reads``-th read since the last apply
    reports (a GET or a watch event), so a test scripts ready / not ready / never ready. A watch
    sends ``watch_events`` events, then holds the stream open until its ``timeoutSeconds`` (as the
    API server does). ``fail[(verb, short)] = (code, reason, message)`` answers a request with an error.
    Requests are recorded as ``(verb, kind short name)`` with verb GET, PATCH or WATCH.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.discovery: list[str] = []
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.status_for: dict[str, object] = {}
        self.reads: dict[tuple[str, str, str], int] = {}
        self.watch_events = 5
        self.fail: dict[tuple[str, str], tuple[int, str, str]] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return self.base_url

    @staticmethod
    def key_of(obj: dict) -> tuple[str, str, str]:
        plural = API_GROUPS[obj["apiVersion"]][0]
        return plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    def seed(self, obj: dict, generation: int = 1) -> None:
        key = self.key_of(obj)
        self.objects[key] = {**obj, "metadata": {**obj["metadata"], "generation": generation,
                                                 "resourceVersion": "100", "uid": "u-1",
                                                 "managedFields": [{"manager": "someone"}]}}
        self.reads[key] = 0

    def object(self, plural: str = "inferenceservices") -> dict | None:
        found = [obj for (p, _, _), obj in self.objects.items() if p == plural]
        return found[0] if found else None

    def calls(self) -> list[tuple[str, str]]:
        return [(r["verb"], r["short"]) for r in self.requests]

    def applied(self, short: str = "isvc") -> list[dict]:
        return [yaml.safe_load(r["body"]) for r in self.requests if (r["verb"], r["short"]) == ("PATCH", short)]

    def _read(self, key) -> dict:
        with self._lock:
            self.reads[key] = self.reads.get(key, 0) + 1
            obj = self.objects[key]
            status = self.status_for.get(key[0], lambda o, n: {})(obj, self.reads[key])
            return {**self.objects[key], "status": status}

    def _handler(self):
        stand_in = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def _route(self, body: bytes):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                found = _discovery(parts.path)
                if found is not None:
                    stand_in.discovery.append(parts.path)
                    return self._reply(200, found)
                segments = parts.path.strip("/").split("/")
                # apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]
                if len(segments) not in (6, 7) or segments[0] != "apis" or segments[3] != "namespaces":
                    return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound",
                                             "message": f"the server could not find {parts.path}"})
                namespace, plural = segments[4], segments[5]
                name = segments[6] if len(segments) == 7 else \
                    query.get("fieldSelector", [""])[0].removeprefix("metadata.name=")
                verb = "WATCH" if query.get("watch") else self.command
                stand_in.requests.append({
                    "verb": verb, "short": SHORT.get(plural, plural), "path": parts.path, "query": query,
                    "content_type": self.headers.get("Content-Type"),
                    "authorization": self.headers.get("Authorization"), "body": body.decode()})
                failure = stand_in.fail.get((verb, SHORT.get(plural, plural)))
                if failure:
                    code, reason, message = failure
                    return self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "code": code, "reason": reason, "message": message})
                key = (plural, namespace, name)
                if verb == "WATCH":
                    return self._watch(key, float(query.get("timeoutSeconds", ["5"])[0]))
                if self.command == "GET":
                    if key not in stand_in.objects:
                        return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound",
                                                 "message": f'{plural} "{name}" not found'})
                    return self._reply(200, stand_in._read(key))
                applied = yaml.safe_load(body)
                generation = stand_in.objects.get(key, {}).get("metadata", {}).get("generation", 0) + 1
                applied["metadata"] = {**applied["metadata"], "generation": generation,
                                       "resourceVersion": str(100 + generation)}
                with stand_in._lock:
                    stand_in.objects[key] = applied
                    stand_in.reads[key] = 0
                return self._reply(200, applied)

            def _watch(self, key, timeout_s: float):
                started = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i in range(stand_in.watch_events if key in stand_in.objects else 0):
                        event = {"type": "ADDED" if i == 0 else "MODIFIED", "object": stand_in._read(key)}
                        data = (json.dumps(event) + "\n").encode()
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                    time.sleep(max(0.0, started + timeout_s - time.monotonic()))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def do_GET(self):
                self._route(b"")

            def do_PATCH(self):
                self._route(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        return Handler


@pytest.fixture
def kube():
    with KubeStandIn() as stand_in:
        yield stand_in


def k8s_settings_env(kube: KubeStandIn, home: Path, token: Path, **extra: str) -> dict[str, str]:
    """Settings of a deploy step that reaches the stand-in with a bearer token from ``token``."""
    return {"MLOPS_PROFILE": "k8s", "MLOPS_HOME": str(home), "MLOPS_S3_BUCKET": "bucket",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLOPS_K8S_NAMESPACE": "mlops",
            "MLOPS_CODE_IMAGE": "registry.example/mlops-code:1", "MLOPS_SERVING_IMAGE": "registry.example/mlops-serving:1",
            "MLOPS_K8S_API": kube.url, "MLOPS_K8S_TOKEN_FILE": str(token),
            "MLOPS_K8S_CA_FILE": str(home / "no-ca.crt"), **extra}
