"""Canary rollout of a model version: deploy at N%, smoke-test with real requests, promote or roll back.

The `local` profile drives the local KServe backend (processes on 127.0.0.1 behind a weighted
ingress); the `k8s` profile drives an InferenceService through the Kubernetes API.
"""

from __future__ import annotations

from typing import Any, Callable

from mlops_assets.settings import Settings


class RolloutFailed(RuntimeError):
    def __init__(self, message: str, smoke: dict | None = None):
        super().__init__(message)
        self.smoke = smoke or {}


def _smoke(settings: Settings, revision: str, config) -> dict:
    from mlops_assets.serving.smoke import run_smoke_test

    return run_smoke_test(settings, revision=revision, n_requests=config.smoke_requests,
                          max_error_rate=config.max_error_rate, max_p99_ms=config.max_p99_ms)


def _serving_version(status: dict, revision: str) -> str | None:
    target = (status.get("revisions") or {}).get(revision)
    return str(target["model_version"]) if target else None


def roll_out(settings: Settings, version: str, config, log: Callable[[str], Any] = print) -> dict:
    if settings.profile == "k8s":
        from mlops_assets.deployment.k8s import roll_out_inference_service

        return roll_out_inference_service(settings, version, config, log=log)
    return _roll_out_local(settings, str(version), config, log)


def _roll_out_local(settings: Settings, version: str, config, log) -> dict:
    from mlops_assets.serving.backend_local import (
        LocalServingBackend,
        ServingBackendError,
    )

    backend = LocalServingBackend(settings)
    status = backend.status()
    stable = _serving_version(status, "stable") if status.get("running") else None
    try:
        if stable == version:
            log(f"v{version} already serves at 100%; re-running the smoke test")
            return _finish(backend, "stable", version, "unchanged", _checked(settings, "stable", config))
        if stable is None:
            log(f"nothing serves yet: deploying v{version} as the stable revision")
            backend.deploy(version)
            return _finish(backend, "stable", version, "first deployment", _checked(settings, "stable", config))
        log(f"canary: v{version} at {config.canary_percent}% next to v{stable}")
        backend.deploy_canary(version, percent=config.canary_percent)
    except ServingBackendError as exc:
        raise RolloutFailed(str(exc)) from exc
    try:
        smoke = _checked(settings, "canary", config)
    except RolloutFailed:
        log(f"canary v{version} failed its smoke test: rolling back to v{stable}")
        backend.rollback()
        raise
    log(f"canary v{version} passed ({smoke['requests']} requests, p99 {smoke.get('client_p99_ms')} ms): promoting")
    backend.promote()
    return _finish(backend, "stable", version, f"promoted over v{stable}", smoke)


def _checked(settings: Settings, revision: str, config) -> dict:
    return require_passed(_smoke(settings, revision, config), revision)


def require_passed(smoke: dict, revision: str, where: str = "") -> dict:
    """The smoke result, or RolloutFailed naming the failed checks and the first problems."""
    if smoke.get("passed"):
        return smoke
    failed = [name for name, ok in (smoke.get("checks") or {}).items() if not ok]
    detail = "; ".join(smoke.get("problems") or [])
    raise RolloutFailed(f"smoke test of the {revision} revision{where} failed: "
                        f"{', '.join(failed) or smoke.get('reason', 'unknown reason')}"
                        + (f" ({detail})" if detail else ""), smoke)


def _finish(backend, revision: str, version: str, action: str, smoke: dict) -> dict:
    return {"endpoint": backend.endpoint, "revision": revision, "model_version": version,
            "action": action, "smoke": smoke}


def serving_health(settings: Settings, champion: str | None) -> dict:
    """Is the endpoint up, and does its stable revision serve the champion?"""
    if settings.profile == "k8s":
        from mlops_assets.deployment.k8s import inference_service_health

        return inference_service_health(settings, champion)
    from mlops_assets.serving.backend_local import LocalServingBackend

    status = LocalServingBackend(settings).status()
    serving = _serving_version(status, "stable") if status.get("running") else None
    healthy = serving is not None and serving == champion
    summary = (f"serving v{serving} at {status.get('endpoint')}" if healthy else
               "endpoint not running" if not status.get("running") else
               f"stable revision serves v{serving}, but @champion is v{champion}")
    return {"healthy": healthy, "summary": summary, "serving_version": serving, "champion": champion,
            "endpoint": status.get("endpoint"), "canary_percent": status.get("canary_percent")}
