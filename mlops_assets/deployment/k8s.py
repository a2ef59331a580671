"""The deploy step in the ``k8s`` profile: render, apply and roll out the KServe InferenceService.

Three ways out of the same rendered manifest:

* :class:`KServeK8sClient` applies it through the Kubernetes API (server-side apply), waits for
  readiness and the canary share, then promotes or rolls back; :func:`roll_out_inference_service`
  is the deploy step around it (smoke test of the canary through its tagged URL in between), and
  :func:`inference_service_health` the serving check;
* :func:`write_gitops_manifest` + :func:`commit_gitops_change` put the release into the GitOps
  overlay that the Argo CD ``Application`` in ``deploy/argocd`` syncs;
* :func:`deploy_executor` runs the deploy step itself as a Kubernetes Job (``k8s_job_executor``).

The kustomize base in ``deploy/kserve/base`` is the template, so the YAML there stays the one source
of truth. For a custom resource kustomize patches with JSON merge-patch semantics (maps merge, lists
are replaced whole); :func:`merge_patch` does the same, and the tests compare both renderings.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from mlops_assets.settings import PROJECT_ROOT, Settings, get_settings

KSERVE_DIR = PROJECT_ROOT / "deploy" / "kserve"
BASE_MANIFEST = KSERVE_DIR / "base" / "inferenceservice.yaml"
OVERLAYS = ("staging", "prod")
COMPONENTS = ("transformer", "predictor")
SERVING_CONTAINER = "kserve-container"
MODEL_VERSION_ANNOTATION = "mlops/model-version"
FIELD_MANAGER = "mlops-deployer"
KSERVE_API = "apis/serving.kserve.io/v1beta1"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
IN_CLUSTER_API_URL = "https://kubernetes.default.svc"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# The deploy step only talks to the API server and runs smoke requests: a small, fixed footprint.
DEPLOY_STEP_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


class DeploymentError(RuntimeError):
    """The InferenceService could not be rolled out; the message carries the reason from its status."""


# --- rendering -------------------------------------------------------------------------------------

def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: what kustomize does when it patches a custom resource."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def overlay_dir(overlay: str) -> Path:
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay {overlay!r} is not one of {', '.join(OVERLAYS)}")
    return KSERVE_DIR / "overlays" / overlay


def overlay_namespace(overlay: str) -> str:
    return load_yaml(overlay_dir(overlay) / "kustomization.yaml")["namespace"]


def _with_env(env: list[dict], values: Mapping[str, str]) -> list[dict]:
    """The container's env list with ``values`` set, existing names kept in place."""
    remaining = dict(values)
    updated = [{"name": e["name"], "value": remaining.pop(e["name"])} if e["name"] in remaining else e
               for e in env]
    return updated + [{"name": name, "value": value} for name, value in remaining.items()]


def _with_arg(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag value`` set once (replaced in place if present)."""
    if flag in args:
        index = args.index(flag)
        return [*args[:index + 1], value, *args[index + 2:]]
    return [*args, flag, value]


def _release_containers(component: dict, image: str, env: Mapping[str, str],
                        model_version: str | None) -> list[dict]:
    containers = copy.deepcopy(component["containers"])
    for container in containers:
        if container["name"] == SERVING_CONTAINER:
            container["image"] = image
            container["env"] = _with_env(container.get("env", []), env)
            if model_version is not None:
                container["args"] = _with_arg(container.get("args", []), "--model_version", model_version)
    return containers


def release_patch(template: dict, model_uri: str, model_version: str, image: str,
                  canary_percent: int) -> dict:
    """The fields a release changes: image, model, canary share (lists whole, as a merge patch needs)."""
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be within 0..100, got {canary_percent}")
    version = str(model_version)
    component_env = {
        "transformer": {"MLOPS_MODEL_VERSION": version},
        "predictor": {"MLOPS_MODEL_URI": model_uri, "MLOPS_MODEL_VERSION": version},
    }
    return {
        "apiVersion": template["apiVersion"],
        "kind": template["kind"],
        "metadata": {"name": template["metadata"]["name"],
                     "annotations": {MODEL_VERSION_ANNOTATION: version}},
        "spec": {
            name: {"canaryTrafficPercent": canary_percent,
                   "containers": _release_containers(template["spec"][name], image, component_env[name],
                                                     version if name == "predictor" else None)}
            for name in COMPONENTS
        },
    }


def render_inference_service(settings: Settings, model_uri: str, model_version: str | int,
                             image: str, canary_percent: int = 100,
                             overlay: str | None = None) -> dict:
    """The InferenceService for one model version: base, then the overlay's patches, then the release.

    Without an overlay the namespace comes from settings; with one, from its kustomization.
    """
    manifest = load_yaml(BASE_MANIFEST)
    if overlay is not None:
        manifest = merge_patch(manifest, load_yaml(overlay_dir(overlay) / "environment.yaml"))
    manifest = merge_patch(manifest, release_patch(manifest, model_uri, str(model_version), image,
                                                   canary_percent))
    if overlay is None:
        manifest["metadata"].update(name=settings.model_name, namespace=settings.k8s_namespace)
    else:
        manifest["metadata"]["namespace"] = overlay_namespace(overlay)
    return manifest


def with_canary_percent(manifest: dict, percent: int) -> dict:
    return merge_patch(manifest, {"spec": {name: {"canaryTrafficPercent": percent}
                                           for name in COMPONENTS if name in manifest["spec"]}})


# --- GitOps ----------------------------------------------------------------------------------------

def write_gitops_manifest(path: Path, manifest: dict) -> Path:
    """Write the release of ``manifest`` as the overlay's patch that Argo CD syncs.

    Only the release fields are written: the overlay's kustomization owns the namespace (a patch
    naming one no longer matches the base) and its environment patch owns replicas and the sink.
    """
    patch = release_patch(manifest, *_release_values(manifest))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by mlops_assets.deployment.k8s (the deploy step in GitOps mode, or\n"
              "# .github/workflows/deploy.yml): the release the overlay rolls out. Do not edit by hand.\n")
    path.write_text(header + yaml.safe_dump(patch, sort_keys=False))
    return path


def _release_values(manifest: dict) -> tuple[str, str, str, int]:
    """(model_uri, model_version, image, canary_percent) of a rendered manifest."""
    predictor = manifest["spec"]["predictor"]
    container = next(c for c in predictor["containers"] if c["name"] == SERVING_CONTAINER)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return (env["MLOPS_MODEL_URI"], env["MLOPS_MODEL_VERSION"], container["image"],
            predictor.get("canaryTrafficPercent", 100))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit_gitops_change(repo_dir: Path, paths: Iterable[Path], message: str) -> str:
    """Commit the written manifests; returns the new commit's sha (Argo CD syncs from it)."""
    _git(repo_dir, "add", "--", *(str(p) for p in paths))
    _git(repo_dir, "commit", "-m", message)
    return _git(repo_dir, "rev-parse", "HEAD")


# --- the Kubernetes API ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RolloutResult:
    name: str
    namespace: str
    status: dict


def _conditions_reason(status: Mapping[str, Any]) -> str:
    failing = [c for c in status.get("conditions", []) if str(c.get("status")) != "True"]
    if not failing:
        return "no status conditions reported" if not status.get("conditions") else "traffic not yet at target"
    return "; ".join(f"{c.get('type')}: {c.get('reason') or 'Unknown'}"
                     + (f" ({c['message']})" if c.get("message") else "") for c in failing)


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and str(c.get("status")) == "True"
               for c in status.get("conditions", []))


def _latest_revision_percent(status: Mapping[str, Any], component: str) -> int | None:
    for entry in status.get("components", {}).get(component, {}).get("traffic", []):
        if entry.get("latestRevision"):
            return entry.get("percent", 0)
    return None


def rollout_reached(resource: Mapping[str, Any], expected_percent: Mapping[str, int]) -> bool:
    """Ready for the current generation, and each component's latest revision at its share."""
    status = resource.get("status") or {}
    generation = resource.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration", 0) < generation:
        return False  # a Ready from the previous spec says nothing about this one
    if not _is_ready(status):
        return False
    return all(_latest_revision_percent(status, c) == p for c, p in expected_percent.items())


def _spec_to_reapply(resource: Mapping[str, Any]) -> dict:
    """A live object reduced to what an apply sends: no status, no server-owned metadata."""
    metadata = resource["metadata"]
    kept = {k: metadata[k] for k in ("name", "namespace", "labels", "annotations") if k in metadata}
    annotations = {k: v for k, v in kept.get("annotations", {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    if annotations:
        kept["annotations"] = annotations
    return {"apiVersion": resource["apiVersion"], "kind": resource["kind"], "metadata": kept,
            "spec": copy.deepcopy(resource["spec"])}


_UNREAD = object()  # deploy_canary: "the caller has not read the live object"


class KServeK8sClient:
    """InferenceService rollouts through the Kubernetes REST API (plain HTTP, bearer token)."""

    def __init__(self, api_url: str, token: str | None = None, verify: bool | str = True,
                 timeout_s: float = 600.0, poll_interval_s: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=api_url.rstrip("/"), headers=headers, verify=verify,
                                  timeout=30.0)
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> "KServeK8sClient":
        """The client a pod builds from its mounted service-account token and CA."""
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        return cls(IN_CLUSTER_API_URL, token=token, verify=str(SERVICE_ACCOUNT_DIR / "ca.crt"), **kwargs)

    def close(self) -> None:
        self._http.close()

    @staticmethod
    def _path(namespace: str, name: str) -> str:
        return f"/{KSERVE_API}/namespaces/{namespace}/inferenceservices/{name}"

    def _check(self, response, action: str):
        if response.status_code >= 400:
            raise DeploymentError(f"{action} failed: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def get(self, namespace: str, name: str) -> dict | None:
        response = self._http.get(self._path(namespace, name))
        if response.status_code == 404:
            return None
        return self._check(response, f"reading InferenceService {namespace}/{name}").json()

    def apply(self, manifest: Mapping[str, Any]) -> dict:
        """Server-side apply: the API server merges our fields, owned by one field manager."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        response = self._http.patch(
            self._path(namespace, name),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content=yaml.safe_dump(dict(manifest), sort_keys=False),
            headers={"Content-Type": APPLY_CONTENT_TYPE},
        )
        return self._check(response, f"applying InferenceService {namespace}/{name}").json()

    def wait_for_rollout(self, namespace: str, name: str, expected_percent: Mapping[str, int],
                         timeout_s: float | None = None) -> dict:
        """Poll until :func:`rollout_reached`; on timeout raise with the status conditions' reason."""
        deadline = self._clock() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            resource = self.get(namespace, name) or {}
            if rollout_reached(resource, expected_percent):
                return resource
            if self._clock() >= deadline:
                raise DeploymentError(
                    f"InferenceService {namespace}/{name} not ready with traffic {dict(expected_percent)}"
                    f" within {self.timeout_s if timeout_s is None else timeout_s:g}s: "
                    + _conditions_reason(resource.get("status") or {}))
            self._sleep(self.poll_interval_s)

    def deploy_canary(self, manifest: Mapping[str, Any], timeout_s: float | None = None,
                      previous: Mapping[str, Any] | None | object = _UNREAD) -> RolloutResult:
        """Apply the new revision at its canary share; roll back to the previous spec if it never gets there.

        ``previous`` is the live object if the caller has just read it (``None``: nothing deployed).
        """
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        if previous is _UNREAD:
            previous = self.get(namespace, name)
        self.apply(manifest)
        # KServe sends everything to the first revision: there is nothing to split against yet.
        expected = {c: (manifest["spec"][c].get("canaryTrafficPercent", 100) if previous else 100)
                    for c in COMPONENTS if c in manifest["spec"]}
        try:
            resource = self.wait_for_rollout(namespace, name, expected, timeout_s)
        except DeploymentError as error:
            if previous is not None:
                self.rollback(previous)
                raise DeploymentError(f"{error}; rolled back to the previous spec") from error
            raise
        return RolloutResult(name, namespace, resource.get("status", {}))

    def promote(self, manifest: Mapping[str, Any], timeout_s: float | None = None) -> RolloutResult:
        """Send all traffic to the latest revision (canary share 100)."""
        promoted = with_canary_percent(dict(manifest), 100)
        namespace, name = promoted["metadata"]["namespace"], promoted["metadata"]["name"]
        self.apply(promoted)
        resource = self.wait_for_rollout(namespace, name, {c: 100 for c in COMPONENTS
                                                           if c in promoted["spec"]}, timeout_s)
        return RolloutResult(name, namespace, resource.get("status", {}))

    def rollback(self, previous: Mapping[str, Any]) -> dict:
        """Re-apply the previous spec with all traffic on it (no new canary of the old model)."""
        return self.apply(with_canary_percent(_spec_to_reapply(previous), 100))


# --- the deploy step: canary, smoke test through the service's URL, promote or roll back -----------

def client_from_settings(settings: Settings, **kwargs: Any) -> KServeK8sClient:
    """The API client of the deploy step: server, token file, CA bundle and timeouts from settings.

    Without a token file (e.g. through ``kubectl proxy``) requests go unauthenticated; a real API
    server then answers 401/403, which surfaces as a :class:`DeploymentError` naming the status.
    """
    token_file, ca_file = Path(settings.k8s_token_file), Path(settings.k8s_ca_file)
    token = token_file.read_text().strip() if token_file.is_file() else None
    verify: bool | str = str(ca_file) if ca_file.is_file() else True
    kwargs.setdefault("timeout_s", settings.ready_timeout_s)
    kwargs.setdefault("poll_interval_s", settings.ready_poll_s)
    return KServeK8sClient(settings.k8s_api_url, token=token, verify=verify, **kwargs)


def deployed_version(resource: Mapping[str, Any] | None) -> str | None:
    """The model version a live InferenceService was released with (its annotation)."""
    annotations = ((resource or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(MODEL_VERSION_ANNOTATION)


def _front(resource: Mapping[str, Any]) -> str:
    """The component requests enter through: the transformer if there is one."""
    return "transformer" if "transformer" in resource.get("spec", {}) else "predictor"


def service_url(status: Mapping[str, Any]) -> str | None:
    """The InferenceService's URL (all traffic, split by the canary share)."""
    return status.get("url") or (status.get("address") or {}).get("url")


def latest_revision_url(status: Mapping[str, Any], component: str) -> str | None:
    """The tagged URL of the component's latest revision (``serving.kserve.io/enable-tag-routing``):
    the canary alone, whatever its share of the main URL."""
    for entry in (status.get("components") or {}).get(component, {}).get("traffic", []):
        if entry.get("latestRevision") and entry.get("url"):
            return entry["url"]
    return None


def smoke_test_url(settings: Settings, url: str, revision: str, model_version: str, config) -> dict:
    """``config.smoke_requests`` V1 predictions (one entity id each) to ``url``: every answer is
    checked like the local smoke test does; error rate and p99 are measured by the client, since the
    servers' /metrics are scraped by Prometheus in the cluster, not reachable through the ingress."""
    from mlops_assets.serving.smoke import default_entity_ids, send_checked_requests

    n_requests = max(1, int(config.smoke_requests))
    ids = default_entity_ids(settings)
    if not ids:
        return {"passed": False, "revision": revision, "url": url, "reason": "no entity ids to send"}
    entity = settings.dataset_spec().entity
    predict = f"{url.rstrip('/')}/v1/models/{settings.model_name}:predict"
    answers = send_checked_requests(predict, revision, [{entity: ids[i % len(ids)]} for i in range(n_requests)],
                                    model_version)
    error_rate = answers["failed_requests"] / n_requests
    result = {"revision": revision, "url": url, "model_version": model_version, **answers, "error_rate": error_rate}
    result["checks"] = {"error_rate_ok": error_rate <= config.max_error_rate,
                        "latency_ok": result["client_p99_ms"] <= config.max_p99_ms}
    result["passed"] = all(result["checks"].values())
    return result


def _checked_smoke(settings: Settings, url: str | None, revision: str, version: str, config) -> dict:
    from mlops_assets.deployment.rollout import RolloutFailed, require_passed

    if not url:
        raise RolloutFailed(f"the InferenceService status reports no URL for the {revision} revision"
                            + (" (is serving.kserve.io/enable-tag-routing set?)" if revision == "canary" else ""))
    return require_passed(smoke_test_url(settings, url, revision, version, config), revision, f" at {url}")


def _result(status: Mapping[str, Any], version: str, action: str, smoke: dict) -> dict:
    predictor = (status.get("components") or {}).get("predictor", {})
    return {"endpoint": service_url(status), "revision": "stable", "model_version": version,
            "action": action, "smoke": smoke,
            "revision_name": predictor.get("latestReadyRevision")}


def roll_out_inference_service(settings: Settings, version: str | int, config,
                               log: Callable[[str], Any] = print) -> dict:
    """The champion rolled out as the InferenceService (``apply`` mode) or committed for Argo CD
    (``gitops`` mode). Raises ``RolloutFailed`` (after rolling back) with the reason."""
    import httpx

    from mlops_assets.deployment.rollout import RolloutFailed

    version = str(version)
    if not settings.image:
        raise RolloutFailed("MLOPS_IMAGE is not set: the InferenceService needs the serving image")
    model_uri = f"models:/{settings.model_name}/{version}"
    if settings.deploy_mode == "gitops":
        return _commit_release(settings, model_uri, version, config, log)
    settings.export_s3_env()  # the smoke test reads entity ids from the S3 offline store
    client = client_from_settings(settings)
    try:
        return _roll_out_applied(client, settings, model_uri, version, config, log)
    except DeploymentError as exc:
        raise RolloutFailed(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise RolloutFailed(f"Kubernetes API {settings.k8s_api_url} (MLOPS_K8S_API) failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def _roll_out_applied(client: KServeK8sClient, settings: Settings, model_uri: str, version: str,
                      config, log) -> dict:
    from mlops_assets.deployment.rollout import RolloutFailed

    namespace, name = settings.k8s_namespace, settings.model_name
    live = client.get(namespace, name)
    stable = deployed_version(live)
    if live is not None and stable == version and rollout_reached(
            live, {c: 100 for c in COMPONENTS if c in live.get("spec", {})}):
        log(f"v{version} already serves at 100% in {namespace}/{name}; re-running the smoke test")
        smoke = _checked_smoke(settings, service_url(live["status"]), "stable", version, config)
        return _result(live["status"], version, "unchanged", smoke)

    percent = config.canary_percent if live is not None else 100
    manifest = render_inference_service(settings, model_uri, version, settings.image, percent)
    if live is None:
        log(f"nothing serves yet: applying {namespace}/{name} with v{version} ({model_uri})")
    else:
        log(f"canary: v{version} at {percent}% next to v{stable} in {namespace}/{name}")
    deployed = client.deploy_canary(manifest, previous=live)  # rolls back itself if never ready

    if live is None:
        smoke = _checked_smoke(settings, service_url(deployed.status), "stable", version, config)
        return _result(deployed.status, version, "first deployment", smoke)

    try:
        smoke = _checked_smoke(settings, latest_revision_url(deployed.status, _front(manifest)), "canary",
                               version, config)
    except RolloutFailed:
        log(f"canary v{version} failed its smoke test: rolling back to v{stable}")
        client.rollback(live)
        raise
    log(f"canary v{version} passed ({smoke['requests']} requests, p99 {smoke['client_p99_ms']} ms): promoting")
    try:
        promoted = client.promote(manifest)
    except DeploymentError as exc:
        log(f"promotion of v{version} did not complete: rolling back to v{stable}")
        client.rollback(live)
        raise DeploymentError(f"{exc}; rolled back to v{stable}") from exc
    return _result(promoted.status, version, f"promoted over v{stable}", smoke)


def _commit_release(settings: Settings, model_uri: str, version: str, config, log) -> dict:
    """GitOps mode: the release (image, model, canary share) written into MLOPS_GITOPS_PATH and
    committed (and pushed to MLOPS_GITOPS_REMOTE if set); Argo CD rolls it out from there."""
    from mlops_assets.deployment.rollout import RolloutFailed

    path = settings.gitops_path
    if path is None:
        raise RolloutFailed("MLOPS_GITOPS_PATH is not set: gitops mode needs the release file to write")

    path.parent.mkdir(parents=True, exist_ok=True)
    repo = path.parent
    try:
        repo = Path(_git(repo, "rev-parse", "--show-toplevel"))
        manifest = render_inference_service(settings, model_uri, version, settings.image,
                                            config.canary_percent)
        write_gitops_manifest(path, manifest)
        if _git(repo, "status", "--porcelain", "--", str(path)):
            message = f"deploy({settings.model_name}): v{version} at {config.canary_percent}% canary"
            sha = commit_gitops_change(repo, [path], message)
            action = f"committed {path.relative_to(repo)} for Argo CD"
        else:
            sha, action = _git(repo, "rev-parse", "HEAD"), "unchanged (release already committed)"
        if settings.gitops_remote:
            _git(repo, "push", settings.gitops_remote, "HEAD")
            action += f", pushed to {settings.gitops_remote}"
    except subprocess.CalledProcessError as exc:
        raise RolloutFailed(f"gitops release in {repo} (MLOPS_GITOPS_PATH={path}) failed: "
                            f"git {' '.join(exc.cmd[3:])}: {(exc.stderr or '').strip()}") from exc
    log(f"v{version} {action} at {sha[:12]}")
    return {"endpoint": None, "revision": sha, "model_version": version, "action": action,
            "smoke": {"skipped": True, "reason": "gitops mode: Argo CD applies the commit; "
                                                 "the serving_healthy check reads the live status"}}


def inference_service_health(settings: Settings, champion: str | None) -> dict:
    """Is the InferenceService ready with all traffic on the champion, and does its URL answer?"""
    import httpx

    namespace, name = settings.k8s_namespace, settings.model_name
    report = {"healthy": False, "serving_version": None, "champion": champion, "endpoint": None,
              "canary_percent": None}
    client = client_from_settings(settings)
    try:
        live = client.get(namespace, name)
    except (DeploymentError, httpx.HTTPError) as exc:
        return {**report, "summary": f"Kubernetes API {settings.k8s_api_url} failed: {exc}"}
    finally:
        client.close()
    if live is None:
        return {**report, "summary": f"InferenceService {namespace}/{name} does not exist"}
    status = live.get("status") or {}
    latest_percent = _latest_revision_percent(status, _front(live))
    report.update(serving_version=deployed_version(live), endpoint=service_url(status),
                  canary_percent=latest_percent if latest_percent not in (None, 100) else 0)
    if not _is_ready(status):
        return {**report, "summary": f"{namespace}/{name} not ready: {_conditions_reason(status)}"}
    if latest_percent != 100:
        return {**report, "summary": f"{namespace}/{name} is mid-rollout: latest revision at "
                                     f"{latest_percent}% of traffic"}
    if report["serving_version"] != champion:
        return {**report, "summary": f"{namespace}/{name} serves v{report['serving_version']}, "
                                     f"but @champion is v{champion}"}
    if not report["endpoint"]:
        return {**report, "summary": f"{namespace}/{name} is ready but reports no URL"}
    probe = f"{report['endpoint'].rstrip('/')}/v1/models/{name}"
    try:
        answer = httpx.get(probe, timeout=5.0)
    except httpx.HTTPError as exc:
        return {**report, "summary": f"{probe} unreachable: {type(exc).__name__}"}
    if answer.status_code != 200:
        return {**report, "summary": f"{probe} answered HTTP {answer.status_code}"}
    return {**report, "healthy": True, "summary": f"serving v{champion} at {report['endpoint']}"}


# --- the deploy step as a Kubernetes Job -------------------------------------------------------------

def deploy_executor_config(settings: Settings) -> dict:
    """``k8s_job_executor`` config for the deploy job: image, namespace, service account, resources."""
    if not settings.image:
        raise DeploymentError("MLOPS_IMAGE is not set: the deploy step's Kubernetes Job needs an image")
    return {
        "job_image": settings.image,
        "job_namespace": settings.k8s_namespace,
        "service_account_name": settings.service_account,
        "resources": copy.deepcopy(DEPLOY_STEP_RESOURCES),
        "env_vars": ["MLOPS_PROFILE=k8s", f"MLOPS_K8S_NAMESPACE={settings.k8s_namespace}"],
        "env_config_maps": ["mlops-settings"],
        "labels": {"app.kubernetes.io/part-of": "mlops-assets"},
    }


DEPLOY_EXECUTOR_NAME = "k8s_deploy_executor"


def deploy_executor(settings: Settings):
    """``dagster_k8s.k8s_job_executor`` configured from settings, for the job holding the deploy step."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(deploy_executor_config(settings), name=DEPLOY_EXECUTOR_NAME)


DEPLOY_JOB_NAME = "deploy_job"


def deploy_job(settings: Settings):
    """The job that rolls the champion out: ``inference_service`` (and its check), each step a Kubernetes Job."""
    import dagster as dg

    return dg.define_asset_job(DEPLOY_JOB_NAME, selection=dg.AssetSelection.assets("inference_service"),
                               executor_def=deploy_executor(settings),
                               description="Canary rollout of @champion as the KServe InferenceService; "
                                           "the step runs as its own Kubernetes Job (k8s_job_executor).")


def deploy_on_new_champion(job):
    """Each new ``champion_model`` materialization (a passed gate) starts ``job``, once."""
    import dagster as dg

    @dg.asset_sensor(asset_key=dg.AssetKey("champion_model"), job=job, name="deploy_new_champion",
                     default_status=dg.DefaultSensorStatus.RUNNING,
                     description="Roll out every new @champion with the deploy job (k8s_job_executor).")
    def deploy_new_champion(context, asset_event):  # no annotations: this module defers them
        version = asset_event.asset_materialization.metadata.get("champion_version")
        version = getattr(version, "value", version)
        return dg.RunRequest(run_key=f"champion-{version}-{asset_event.timestamp}",
                             tags={"mlops/trigger": "new_champion", "mlops/champion_version": str(version)})

    return deploy_new_champion


def resolved_executor_config(settings: Settings) -> dict:
    """The executor config as Dagster validates and fills it in for a run (defaults included)."""
    import dagster as dg

    @dg.op(name="inference_service")
    def deploy_step():
        pass

    @dg.job(name="deploy_executor_probe", executor_def=deploy_executor(settings))
    def probe():
        deploy_step()

    return dg.validate_run_config(probe)["execution"][DEPLOY_EXECUTOR_NAME]


def deploy_step_job(settings: Settings, run_id: str, step_key: str, args: list[str] | None = None) -> dict:
    """The Job manifest dagster-k8s launches for one deploy step, built by its own constructor.

    The resolved executor config maps to a ``K8sContainerContext`` field by field as
    ``k8s_job_executor`` does; ``construct_dagster_k8s_job`` then builds the Job.
    """
    import kubernetes
    from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import get_k8s_job_name

    config = resolved_executor_config(settings)
    context = K8sContainerContext(
        image_pull_policy=config.get("image_pull_policy"),
        service_account_name=config.get("service_account_name"),
        env_config_maps=config.get("env_config_maps"),
        env_secrets=config.get("env_secrets"),
        env_vars=config.get("env_vars"),
        volume_mounts=config.get("volume_mounts"),
        volumes=config.get("volumes"),
        labels=config.get("labels"),
        namespace=config.get("job_namespace"),
        resources=config.get("resources"),
    )
    job_name = f"dagster-step-{get_k8s_job_name(run_id, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image=config["job_image"],
                                       dagster_home="/opt/dagster/dagster_home"),
        args=args or ["dagster", "api", "execute_step"],
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": step_key, "dagster/run-id": run_id},
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    manifest["metadata"]["namespace"] = context.namespace  # the executor creates the Job there
    return manifest


# --- command line: what .github/workflows/deploy.yml runs --------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_assets.deployment.k8s",
        description="Write a release (image, model, canary share) into a GitOps overlay of deploy/kserve.")
    parser.add_argument("--overlay", choices=OVERLAYS, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--canary-percent", type=int, default=20)
    options = parser.parse_args(argv)
    manifest = render_inference_service(get_settings(), options.model_uri, options.model_version,
                                        options.image, options.canary_percent, overlay=options.overlay)
    print(write_gitops_manifest(overlay_dir(options.overlay) / "release.yaml", manifest))


if __name__ == "__main__":
    main()
