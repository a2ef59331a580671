"""The Kubernetes API through the official ``kubernetes`` client: server-side apply with the
``DynamicClient``, reads, and watches that wait for a condition on one object.

Authentication, in order: an explicit API URL from settings (``MLOPS_K8S_API``, with the token and
CA files if present), the pod's service account (in-cluster), a kubeconfig file. Every API error
(401, 403, 404 where an object must exist, 409, 5xx, or an unreachable server) becomes a
:class:`KubeApiError` naming the verb, the resource and the server's reason.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mlops_assets.settings import Settings

from .backend import ServingError

FIELD_MANAGER = "mlops-deployer"
WATCH_READ_MARGIN_S = 30  # the client's read timeout above the server-side watch timeout


class KubeApiError(ServingError):
    def __init__(self, verb: str, resource: str, status: int | None, reason: str):
        self.verb, self.resource, self.status = verb, resource, status
        super().__init__(f"Kubernetes API: {verb} {resource} failed: "
                         + (f"HTTP {status} " if status else "") + reason)


class WaitTimeout(ServingError):
    """The watched object did not reach the condition in time; ``last`` is the last state seen."""

    def __init__(self, message: str, last: dict | None):
        super().__init__(message)
        self.last = last or {}


@dataclass(frozen=True)
class Ref:
    """One namespaced object of a kind the API server discovers."""

    api_version: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> "Ref":
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])


def _reason(exc: Exception) -> str:
    """The API server's Status message (or the transport error) in one line."""
    import json

    body = getattr(exc, "body", None) or ""
    try:
        status = json.loads(body)
        text = f"{status.get('reason') or ''}: {status.get('message') or ''}".strip(": ")
    except (TypeError, ValueError):
        text = str(body)[:300]
    return text or getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"


def api_client(settings: Settings):
    """A ``kubernetes.client.ApiClient`` authenticated as the settings say (see the module docstring)."""
    from kubernetes import client, config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = client.Configuration()
    token_file, ca_file = Path(settings.k8s_token_file), Path(settings.k8s_ca_file)
    if settings.k8s_api_url:
        configuration.host = settings.k8s_api_url.rstrip("/")
        if token_file.is_file():
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
            # projected service-account tokens rotate: read the file again before each request
            configuration.refresh_api_key_hook = lambda c: c.api_key.update(BearerToken=token_file.read_text().strip())
            configuration.refresh_api_key_hook(configuration)
        if ca_file.is_file():
            configuration.ssl_ca_cert = str(ca_file)
    elif token_file.is_file():
        environ = {name: value for name, value in (("KUBERNETES_SERVICE_HOST", settings.k8s_service_host),
                                                   ("KUBERNETES_SERVICE_PORT", settings.k8s_service_port)) if value}
        try:
            InClusterConfigLoader(token_filename=str(token_file), cert_filename=str(ca_file),
                                  environ=environ).load_and_set(configuration)
        except config.ConfigException as exc:
            raise KubeApiError("authenticate to", "the in-cluster API server", None, str(exc)) from exc
    else:
        try:
            config.load_kube_config(config_file=settings.kubeconfig, context=settings.kube_context,
                                    client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            raise KubeApiError("authenticate to", "the API server", None,
                               f"no MLOPS_K8S_API, no service-account token at {token_file}, "
                               f"and no usable kubeconfig ({exc})") from exc
    return client.ApiClient(configuration)


class KubeApi:
    def __init__(self, client, discovery_cache: Path | None = None,
                 clock: Callable[[], float] = time.monotonic):
        from kubernetes.dynamic import DynamicClient

        self._client = client
        self._clock = clock
        try:
            self._dynamic = DynamicClient(client, cache_file=str(discovery_cache) if discovery_cache else None)
        except Exception as exc:
            raise self._error(exc, "discover", "the API groups") from exc

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "KubeApi":
        kwargs.setdefault("discovery_cache", settings.home / "cache" / "k8s-discovery.json")
        Path(kwargs["discovery_cache"]).parent.mkdir(parents=True, exist_ok=True)
        return cls(api_client(settings), **kwargs)

    @property
    def host(self) -> str:
        return self._client.configuration.host

    def close(self) -> None:
        self._client.close()

    def _error(self, exc: Exception, verb: str, resource: Any) -> KubeApiError:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

        if isinstance(exc, ResourceNotFoundError):
            return KubeApiError(verb, str(resource), None, f"the API server at {self.host} does not serve "
                                                           f"this kind (is its CRD installed?): {exc}")
        if isinstance(exc, (DynamicApiError, ApiException)):
            return KubeApiError(verb, str(resource), getattr(exc, "status", None), _reason(exc))
        return KubeApiError(verb, str(resource), None, f"{self.host} unreachable: {type(exc).__name__}: {exc}")

    def _resource(self, ref: Ref):
        try:
            return self._dynamic.resources.get(api_version=ref.api_version, kind=ref.kind)
        except Exception as exc:
            raise self._error(exc, "discover", f"{ref.api_version} {ref.kind}") from exc

    def get(self, ref: Ref) -> dict | None:
        """The live object, ``None`` if it does not exist."""
        from kubernetes.dynamic.exceptions import NotFoundError

        resource = self._resource(ref)
        try:
            return self._dynamic.get(resource, name=ref.name, namespace=ref.namespace).to_dict()
        except NotFoundError:
            return None
        except Exception as exc:
            raise self._error(exc, "get", ref) from exc

    def apply(self, manifest: Mapping[str, Any]) -> dict:
        """Server-side apply, fields owned by one field manager (conflicts forced: the deployer owns a release)."""
        ref = Ref.of(manifest)
        resource = self._resource(ref)
        try:
            return self._dynamic.server_side_apply(resource, body=dict(manifest), name=ref.name,
                                                   namespace=ref.namespace, field_manager=FIELD_MANAGER,
                                                   force_conflicts=True).to_dict()
        except Exception as exc:
            raise self._error(exc, "apply", ref) from exc

    def wait_for(self, ref: Ref, done: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
        """Watch ``ref`` until ``done(object)``; :class:`WaitTimeout` (with the last state) after ``timeout_s``.

        The watch starts without a resourceVersion, so its first event is the current state.
        """
        from kubernetes import watch

        resource = self._resource(ref)
        deadline = self._clock() + timeout_s
        last: dict | None = None
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise WaitTimeout(f"{ref} not {what} within {timeout_s:g}s", last)
            watcher = watch.Watch()
            try:
                for event in self._dynamic.watch(resource, namespace=ref.namespace, name=ref.name,
                                                 timeout=math.ceil(remaining), watcher=watcher):
                    if event["type"] == "DELETED":
                        last = None
                        continue
                    last = event["raw_object"]
                    if done(last):
                        watcher.stop()
                        return last
            except Exception as exc:
                raise self._error(exc, "watch", ref) from exc
