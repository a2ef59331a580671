"""The InferenceService as data: rendered from the kustomize base in ``deploy/kserve`` (plus an
overlay's patches and a release), and its live status read back (ready? traffic at the share? URLs?).

The YAML in ``deploy/kserve/base`` is the one source of truth. For a custom resource kustomize
patches with JSON merge-patch semantics (maps merge, lists are replaced whole); :func:`merge_patch`
does the same, and the tests compare both renderings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

from mlops_assets.settings import PROJECT_ROOT, Settings

KSERVE_DIR = PROJECT_ROOT / "deploy" / "kserve"
BASE_MANIFEST = KSERVE_DIR / "base" / "inferenceservice.yaml"
OVERLAYS = ("staging", "prod")
COMPONENTS = ("transformer", "predictor")
SERVING_CONTAINER = "kserve-container"
MODEL_VERSION_ANNOTATION = "mlops/model-version"


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



# --- the live object ------------------------------------------------------------------------------

def conditions_reason(status: Mapping[str, Any]) -> str:
    failing = [c for c in status.get("conditions", []) if str(c.get("status")) != "True"]
    if not failing:
        return "no status conditions reported" if not status.get("conditions") else "traffic not yet at target"
    return "; ".join(f"{c.get('type')}: {c.get('reason') or 'Unknown'}"
                     + (f" ({c['message']})" if c.get("message") else "") for c in failing)


def is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and str(c.get("status")) == "True"
               for c in status.get("conditions", []))


def latest_revision_percent(status: Mapping[str, Any], component: str) -> int | None:
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
    if not is_ready(status):
        return False
    return all(latest_revision_percent(status, c) == p for c, p in expected_percent.items())


def spec_to_reapply(resource: Mapping[str, Any]) -> dict:
    """A live object reduced to what an apply sends: no status, no server-owned metadata."""
    metadata = resource["metadata"]
    kept = {k: metadata[k] for k in ("name", "namespace", "labels", "annotations") if k in metadata}
    annotations = {k: v for k, v in kept.get("annotations", {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    if annotations:
        kept["annotations"] = annotations
    return {"apiVersion": resource["apiVersion"], "kind": resource["kind"], "metadata": kept,
            "spec": copy.deepcopy(resource["spec"])}


def deployed_version(resource: Mapping[str, Any] | None) -> str | None:
    """The model version a live InferenceService was released with (its annotation)."""
    annotations = ((resource or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(MODEL_VERSION_ANNOTATION)


def front_component(resource: Mapping[str, Any]) -> str:
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


