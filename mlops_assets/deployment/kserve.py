"""The ``k8s`` serving backend: the champion rolled out as the KServe InferenceService.

One rollout, two ways to change the cluster: :class:`KServeBackend` applies the manifest through the
Kubernetes API (server-side apply); :class:`~.gitops.GitOpsBackend` commits it for Argo CD instead
and overrides :meth:`KServeBackend._publish` and :meth:`KServeBackend._undo`. Both then watch the
InferenceService until the new revision is ready at its share, smoke-test the canary through its
tagged URL, promote to 100% (or undo and fail with the reason the status gives).
"""

from __future__ import annotations

from typing import Any, Mapping

from mlops_assets.settings import Settings

from .backend import Log, RolloutConfig, RolloutFailed, ServingBackend, require_passed, rollout_result
from .kube_api import KubeApi, KubeApiError, Ref, WaitTimeout
from .manifests import (
    COMPONENTS,
    conditions_reason,
    deployed_version,
    front_component,
    is_ready,
    latest_revision_percent,
    latest_revision_url,
    render_inference_service,
    rollout_reached,
    service_url,
    spec_to_reapply,
    with_canary_percent,
)

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"


def smoke_test_url(settings: Settings, url: str, revision: str, model_version: str, config: RolloutConfig) -> dict:
    """``config.smoke_requests`` V1 predictions (one entity id each) to ``url``: every answer is
    checked like the local smoke test does; error rate and p99 are measured by the client, since the
    servers' /metrics are scraped by Prometheus in the cluster, not reachable through the ingress."""
    from mlops_assets.serving.smoke import default_entity_ids, send_checked_requests

    n_requests = max(1, int(config.smoke_requests))
    settings.export_s3_env()  # the entity ids come from the S3 offline store
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


class KServeBackend(ServingBackend):
    kind = "KServe InferenceService (server-side apply)"

    def __init__(self, settings: Settings, api: KubeApi | None = None):
        self.settings = settings
        self._api = api
        self.ref = Ref(KSERVE_API_VERSION, "InferenceService", settings.k8s_namespace, settings.model_name)

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi.from_settings(self.settings)
        return self._api

    # --- what differs between applying and GitOps ------------------------------------------------
    def _publish(self, manifest: dict, live: dict | None, change: str, log: Log) -> None:
        """Make ``manifest`` the desired state of the cluster."""
        self.api.apply(manifest)

    def _undo(self, live: dict | None, log: Log) -> str:
        """Undo what :meth:`_publish` did in this rollout; returns what was done."""
        if live is None:
            return "nothing to roll back to"
        self.api.apply(with_canary_percent(spec_to_reapply(live), 100))
        return "rolled back to the previous spec"

    def _begin(self) -> None:
        """Called before each rollout (GitOps forgets the commits of the previous one)."""

    # --- the rollout ------------------------------------------------------------------------------
    def roll_out(self, version: str, config: RolloutConfig, log: Log = print) -> dict:
        try:
            return self._roll_out(str(version), config, log)
        except (KubeApiError, WaitTimeout) as exc:
            raise RolloutFailed(str(exc)) from exc

    def _roll_out(self, version: str, config: RolloutConfig, log: Log) -> dict:
        self._begin()
        live = self.api.get(self.ref)
        stable = deployed_version(live)
        if live is not None and stable == version and rollout_reached(
                live, {c: 100 for c in COMPONENTS if c in live.get("spec", {})}):
            log(f"v{version} already serves at 100% as {self.ref}; re-running the smoke test")
            smoke = self._smoke(service_url(live.get("status") or {}), "stable", version, config)
            return self._result(live, version, "unchanged", smoke)

        percent = config.canary_percent if live is not None else 100
        manifest = render_inference_service(self.settings, f"models:/{self.settings.model_name}/{version}",
                                            version, self.settings.serving_image, percent)
        if live is None:
            log(f"nothing serves yet: v{version} as {self.ref} at 100%")
        else:
            log(f"canary: v{version} at {percent}% next to v{stable} in {self.ref}")
        canary = self._step(manifest, live, f"v{version} at {percent}%", log)
        if live is None:
            smoke = self._guarded(live, log, lambda: self._smoke(
                service_url(canary.get("status") or {}), "stable", version, config))
            return self._result(canary, version, "first deployment", smoke)

        smoke = self._guarded(live, log, lambda: self._smoke(
            latest_revision_url(canary.get("status") or {}, front_component(manifest)), "canary", version, config))
        log(f"canary v{version} passed ({smoke['requests']} requests, p99 {smoke['client_p99_ms']} ms): promoting")
        promoted = self._step(with_canary_percent(manifest, 100), live, f"v{version} at 100%", log)
        return self._result(promoted, version, f"promoted over v{stable}", smoke)

    def _step(self, manifest: dict, live: dict | None, change: str, log: Log) -> dict:
        """Publish ``manifest`` and watch the InferenceService reach it; undo and fail if it never does."""
        # KServe sends everything to the first revision: there is nothing to split against yet.
        expected = {c: (manifest["spec"][c].get("canaryTrafficPercent", 100) if live else 100)
                    for c in COMPONENTS if c in manifest["spec"]}

        def publish_and_wait() -> dict:
            self._publish(manifest, live, change, log)
            return self._wait(expected)

        return self._guarded(live, log, publish_and_wait)

    def _guarded(self, live: dict | None, log: Log, action):
        """``action()``; if it fails, undo this rollout's changes and raise RolloutFailed saying both."""
        try:
            return action()
        except (RolloutFailed, WaitTimeout, KubeApiError) as exc:
            try:
                undone = self._undo(live, log)
            except (KubeApiError, RolloutFailed) as undo_failed:
                undone = f"undoing the rollout failed too: {undo_failed}"
            log(f"{exc}; {undone}")
            if isinstance(exc, RolloutFailed):
                raise RolloutFailed(f"{exc}; {undone}", exc.smoke) from exc
            raise RolloutFailed(f"{exc}; {undone}") from exc

    def _wait(self, expected: Mapping[str, int]) -> dict:
        try:
            return self.api.wait_for(self.ref, lambda obj: rollout_reached(obj, expected),
                                     self.settings.ready_timeout_s, f"ready with traffic {dict(expected)}")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}: {conditions_reason((exc.last or {}).get('status') or {})}", exc.last) from exc

    def _smoke(self, url: str | None, revision: str, version: str, config: RolloutConfig) -> dict:
        if not url:
            raise RolloutFailed(f"{self.ref} reports no URL for the {revision} revision"
                                + (" (is serving.kserve.io/enable-tag-routing set?)" if revision == "canary" else ""))
        return require_passed(smoke_test_url(self.settings, url, revision, version, config), revision, f" at {url}")

    @staticmethod
    def _result(resource: Mapping[str, Any], version: str, action: str, smoke: dict) -> dict:
        status = resource.get("status") or {}
        predictor = (status.get("components") or {}).get("predictor", {})
        return rollout_result(service_url(status), version, action, smoke,
                              revision_name=predictor.get("latestReadyRevision"))

    # --- what is serving ------------------------------------------------------------------------
    def serving_version(self) -> str | None:
        return deployed_version(self.api.get(self.ref))

    def health(self, champion: str | None) -> dict:
        """Is the InferenceService ready with all traffic on the champion, and does its URL answer?"""
        import httpx

        report = {"healthy": False, "serving_version": None, "champion": champion, "endpoint": None,
                  "canary_percent": None}
        try:
            live = self.api.get(self.ref)
        except KubeApiError as exc:
            return {**report, "summary": str(exc)}
        if live is None:
            return {**report, "summary": f"{self.ref} does not exist"}
        status = live.get("status") or {}
        latest_percent = latest_revision_percent(status, front_component(live))
        report.update(serving_version=deployed_version(live), endpoint=service_url(status),
                      canary_percent=latest_percent if latest_percent not in (None, 100) else 0)
        where = f"{self.ref.namespace}/{self.ref.name}"
        if not is_ready(status):
            return {**report, "summary": f"{where} not ready: {conditions_reason(status)}"}
        if latest_percent != 100:
            return {**report, "summary": f"{where} is mid-rollout: latest revision at {latest_percent}% of traffic"}
        if report["serving_version"] != champion:
            return {**report, "summary": f"{where} serves v{report['serving_version']}, but @champion is v{champion}"}
        if not report["endpoint"]:
            return {**report, "summary": f"{where} is ready but reports no URL"}
        probe = f"{report['endpoint'].rstrip('/')}/v1/models/{self.ref.name}"
        try:
            answer = httpx.get(probe, timeout=5.0)
        except httpx.HTTPError as exc:
            return {**report, "summary": f"{probe} unreachable: {type(exc).__name__}"}
        if answer.status_code != 200:
            return {**report, "summary": f"{probe} answered HTTP {answer.status_code}"}
        return {**report, "healthy": True, "summary": f"serving v{champion} at {report['endpoint']}"}
