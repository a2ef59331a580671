"""The ``local`` serving backend: model-server processes on 127.0.0.1 behind the weighted ingress
(``mlops_assets.serving.backend_local``), driven through its public methods only."""

from __future__ import annotations

import time

from mlops_assets.settings import Settings

from .backend import Log, RolloutConfig, RolloutFailed, ServingBackend, require_passed, rollout_result


def _revision_version(status: dict, revision: str) -> str | None:
    target = (status.get("revisions") or {}).get(revision)
    return str(target["model_version"]) if target else None


class LocalBackend(ServingBackend):
    kind = "local processes"
    supports_online_gate = True

    def __init__(self, settings: Settings):
        self.settings = settings

    def _servers(self):
        from mlops_assets.serving.backend_local import LocalServingBackend

        return LocalServingBackend(self.settings)

    def _smoke(self, revision: str, config: RolloutConfig) -> dict:
        from mlops_assets.serving.smoke import run_smoke_test

        return require_passed(run_smoke_test(self.settings, revision=revision, n_requests=config.smoke_requests,
                                             max_error_rate=config.max_error_rate, max_p99_ms=config.max_p99_ms,
                                             max_p99_ratio=config.max_p99_ratio),
                              revision)

    def serving_version(self) -> str | None:
        status = self._servers().status()
        return _revision_version(status, "stable") if status.get("running") else None

    def roll_out(self, version: str, config: RolloutConfig, log: Log = print) -> dict:
        from mlops_assets.serving.backend_local import ServingBackendError

        version = str(version)
        servers = self._servers()
        stable = self.serving_version()
        try:
            if stable == version:
                log(f"v{version} already serves at 100%; re-running the smoke test")
                return rollout_result(servers.endpoint, version, "unchanged", self._smoke("stable", config))
            if stable is None:
                log(f"nothing serves yet: deploying v{version} as the stable revision")
                servers.deploy(version)
                return rollout_result(servers.endpoint, version, "first deployment", self._smoke("stable", config))
            mode = config.ab.mode
            if mode == "shadow":
                log(f"shadow: v{version} gets a copy of the traffic of v{stable}, answers nobody")
            else:
                log(f"canary: v{version} at {config.canary_percent}% next to v{stable}")
            started = time.monotonic()
            servers.deploy_canary(version, percent=config.canary_percent, mode="shadow" if mode == "shadow" else "canary",
                                  gate=config.ab.policy() if mode != "off" else None)
            log(f"canary v{version} ready at {config.canary_percent}% in {time.monotonic() - started:.1f} s: smoke test")
        except ServingBackendError as exc:
            raise RolloutFailed(str(exc)) from exc
        try:
            smoke = self._smoke("canary", config)
        except RolloutFailed:
            log(f"canary v{version} failed its smoke test: rolling back to v{stable}")
            servers.rollback()
            raise
        if config.ab.mode != "off":
            log(f"canary v{version} passed its smoke test: kept in {config.ab.mode} mode until online_evaluation "
                f"decides (min {config.ab.min_labelled_samples} labelled predictions each, alpha {config.ab.alpha:g}, "
                f"margin {config.ab.margin:g}, at most {config.ab.max_wait_s:g} s)")
            return rollout_result(servers.endpoint, version, f"{config.ab.mode} under online evaluation next to "
                                                             f"v{stable}", smoke, revision="canary")
        log(f"canary v{version} passed ({smoke['requests']} requests, p99 {smoke.get('client_p99_ms')} ms): promoting")
        servers.promote()
        log(f"v{version} serves 100%")
        return rollout_result(servers.endpoint, version, f"promoted over v{stable}", smoke)

    def online_gate(self) -> dict | None:
        status = self._servers().status()
        gate = status.get("online_gate") if status.get("running") else None
        if not gate or _revision_version(status, "canary") is None:
            return None
        return {**gate, "mode": status.get("mode", "canary"), "canary_percent": status.get("canary_percent"),
                "endpoint": status.get("endpoint")}

    def promote_canary(self) -> dict:
        status = self._servers().promote()
        version = _revision_version(status, "stable")
        return rollout_result(status.get("endpoint"), version, "promoted by the online A/B gate", {})

    def rollback_canary(self) -> dict:
        status = self._servers().rollback()
        version = _revision_version(status, "stable")
        return rollout_result(status.get("endpoint"), version, "canary rolled back by the online A/B gate", {})

    def health(self, champion: str | None) -> dict:
        status = self._servers().status()
        serving = _revision_version(status, "stable") if status.get("running") else None
        gate = status.get("online_gate") if status.get("running") else None
        if gate and champion is not None and _revision_version(status, "canary") == champion:
            return {"healthy": True, "summary": f"serving v{serving}; @champion v{champion} is the "
                                                f"{status.get('mode', 'canary')} under online A/B evaluation",
                    "serving_version": serving, "champion": champion, "endpoint": status.get("endpoint"),
                    "canary_percent": status.get("canary_percent")}
        healthy = serving is not None and serving == champion
        summary = (f"serving v{serving} at {status.get('endpoint')}" if healthy else
                   "endpoint not running" if not status.get("running") else
                   f"stable revision serves v{serving}, but @champion is v{champion}")
        return {"healthy": healthy, "summary": summary, "serving_version": serving, "champion": champion,
                "endpoint": status.get("endpoint"), "canary_percent": status.get("canary_percent")}
