"""The one interface the deployment layer talks to: a :class:`ServingBackend` rolls a model version
out (canary, smoke test, promote or roll back), reports health, and says what is serving.

``mlops_assets.resources.serving_backend`` picks the implementation once from the settings: local
processes (:mod:`.local`), KServe through the Kubernetes API (:mod:`.kserve`), or GitOps through
Argo CD (:mod:`.gitops`). ``inference_service``, its check and the rollback job see only this class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import dagster as dg

from .ab_test import ABConfig

Log = Callable[[str], Any]


class RolloutConfig(dg.Config):
    canary_percent: int = 20
    smoke_requests: int = 50
    max_error_rate: float = 0.0
    max_p99_ms: float = 250.0
    # ...or, locally, a canary p99 within this many times the stable revision's, measured in the same
    # smoke test (a loaded machine slows both alike); 0: the absolute limit only
    max_p99_ratio: float = 2.0
    # The online A/B gate: off (promote once the smoke test passes), or keep the canary / shadow
    # running until `online_evaluation` promotes or rolls it back (see ab_test.py).
    ab: ABConfig = ABConfig()


class RolloutFailed(RuntimeError):
    """The rollout did not complete; whatever it changed has been undone. ``smoke`` is the smoke result, if any."""

    def __init__(self, message: str, smoke: dict | None = None):
        super().__init__(message)
        self.smoke = smoke or {}


class ServingError(RuntimeError):
    """The backend could not tell or change what is serving (e.g. the API refused the request)."""


class ServingBackend(ABC):
    """Where the champion is served. Every method names the resource and the reason when it fails."""

    kind: str = "abstract"

    @abstractmethod
    def roll_out(self, version: str, config: RolloutConfig, log: Log = print) -> dict:
        """Serve ``version``: canary, smoke test, promote; on failure undo and raise :class:`RolloutFailed`.

        Returns ``{"endpoint", "revision", "model_version", "action", "smoke"}``.
        """

    @abstractmethod
    def health(self, champion: str | None) -> dict:
        """``{"healthy", "summary", "serving_version", "champion", "endpoint", "canary_percent"}``."""

    @abstractmethod
    def serving_version(self) -> str | None:
        """The version at full traffic, ``None`` if nothing serves; :class:`ServingError` if unknown."""

    # --- the online A/B gate (local processes only so far) -------------------------------------
    supports_online_gate: bool = False

    def online_gate(self) -> dict | None:
        """The canary under online evaluation: its stored policy plus ``canary_version``,
        ``stable_version``, ``started_at``, ``mode``, ``canary_percent``; ``None`` if there is none."""
        return None

    def promote_canary(self) -> dict:
        """The canary under evaluation takes all traffic; returns :func:`rollout_result`."""
        raise ServingError(f"the online A/B gate is not implemented for {self.kind}")

    def rollback_canary(self) -> dict:
        """The canary under evaluation stops; stable keeps serving; returns :func:`rollout_result`."""
        raise ServingError(f"the online A/B gate is not implemented for {self.kind}")


def require_passed(smoke: dict, revision: str, where: str = "") -> dict:
    """The smoke result, or RolloutFailed naming the failed checks and the first problems."""
    if smoke.get("passed"):
        return smoke
    failed = [name for name, ok in (smoke.get("checks") or {}).items() if not ok]
    detail = "; ".join(smoke.get("problems") or [])
    raise RolloutFailed(f"smoke test of the {revision} revision{where} failed: "
                        f"{', '.join(failed) or smoke.get('reason', 'unknown reason')}"
                        + (f" ({detail})" if detail else ""), smoke)


def rollout_result(endpoint: str | None, version: str, action: str, smoke: dict, **extra: Any) -> dict:
    return {"endpoint": endpoint, "revision": "stable", "model_version": str(version), "action": action,
            "smoke": smoke, **extra}
