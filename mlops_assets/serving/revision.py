"""What a local serving deployment is made of: revisions of replicas of processes, and the router
that splits traffic between the stable and the canary revision (data and pure helpers; the
:class:`~mlops_assets.serving.controller.Controller` runs the processes)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.serving.metrics import ingress_series
from mlops_assets.serving.routing import sticky_is_canary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    """One supervised server process; restarted on the same port when it dies unasked."""

    role: str
    port: int
    argv: list[str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    up: bool = False  # running and was ready after its (re)start: the supervisor's view
    probe_ok: bool = True  # the latest readiness probes passed
    crashes: list[float] = field(default_factory=list)
    restart_to_ready_s: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready(self) -> bool:
        return self.up and self.probe_ok

    def describe(self) -> dict:
        return {"port": self.port, "pid": self.process.pid if self.process else None, "url": self.url,
                "ready": self.ready, "restarts": len(self.crashes),
                "restart_to_ready_s": [round(s, 3) for s in self.restart_to_ready_s]}


@dataclass
class Replica:
    """A predictor and the transformer in front of it; ready only when both are."""

    index: int
    predictor: Child
    transformer: Child

    @property
    def ready(self) -> bool:
        return self.predictor.ready and self.transformer.ready

    @property
    def children(self) -> tuple[Child, Child]:
        return self.predictor, self.transformer


@dataclass
class Revision:
    """The replicas serving one model version; ``name`` is its traffic slot (stable or canary)."""

    name: str
    model_version: str | None
    replicas: list[Replica]
    started_at: str
    inflight: int = 0
    _turn: int = 0

    @property
    def children(self) -> list[Child]:
        return [child for replica in self.replicas for child in replica.children]

    def ready_replicas(self) -> list[Replica]:
        """Ready replicas, rotated round robin: the first is this request's, the others its retries."""
        self._turn += 1
        n = len(self.replicas)
        ordered = [self.replicas[(self._turn + i) % n] for i in range(n)]
        return [replica for replica in ordered if replica.ready]


class Router:
    """Traffic between stable and canary, like KServe's ``canaryTrafficPercent``.

    ``mode="canary"``: a request naming an entity goes to the revision its entity's hash bucket picks
    (sticky: one customer, one revision, see :mod:`~mlops_assets.serving.routing`); a request without
    one gets a deterministic weighted round robin. ``mode="shadow"``: every client request goes to
    stable, and :meth:`shadow` names the challenger that gets a copy.
    """

    def __init__(self, model_name: str = ""):
        self.model_name = model_name
        self.stable: Revision | None = None
        self.canary: Revision | None = None
        self.canary_percent = 0
        self.mode = "canary"
        self._credit = 0

    def set(self, stable: Revision | None, canary: Revision | None, percent: int, mode: str = "canary") -> None:
        self.stable, self.canary = stable, canary
        self.mode = mode if canary is not None else "canary"
        self.canary_percent = percent if canary is not None and self.mode == "canary" else 0
        if stable is not None and stable.name != "stable":
            stable.name = "stable"
        ingress_series()[1].labels(self.model_name).set(self.canary_percent)

    @property
    def split(self) -> bool:
        """Whether requests are divided between two revisions (the entity decides, when there is one)."""
        return self.canary is not None and self.stable is not None and 0 < self.canary_percent < 100

    def shadow(self) -> Revision | None:
        return self.canary if self.mode == "shadow" and self.stable is not None else None

    def route(self, entity_id: int | None = None) -> Revision | None:
        stable, canary = self.stable, self.canary
        if canary is None or self.canary_percent <= 0:
            return stable or canary
        if stable is None or self.canary_percent >= 100:
            return canary
        if entity_id is not None:
            return canary if sticky_is_canary(entity_id, self.canary_percent) else stable
        self._credit += self.canary_percent
        if self._credit >= 100:
            self._credit -= 100
            return canary
        return stable


def scrape_targets(ingress_port: int, states: list[dict]) -> list[dict]:
    """Prometheus file-SD groups: the one ingress, and every model's replicas (predictor and transformer)."""
    groups = [{"targets": [f"127.0.0.1:{ingress_port}"], "labels": {"role": "ingress"}}]
    for state in states:
        for name, revision in state["revisions"].items():
            if revision is None:
                continue
            for index, replica in enumerate(revision.get("replicas") or [revision]):
                for role in ("predictor", "transformer"):
                    groups.append({"targets": [f"127.0.0.1:{replica[role]['port']}"],
                                   "labels": {"revision": name, "role": role, "model_name": state["model_name"],
                                              "replica": str(index),
                                              "model_version": str(revision["model_version"])}})
    return groups


def state_pids(state: dict) -> list[int]:
    """Every serving process a state file names (all replicas and the warm standby processes)."""
    pids = []
    for revision in (state.get("revisions") or {}).values():
        if not revision:
            continue
        for replica in revision.get("replicas") or [revision]:
            pids += [replica[role]["pid"] for role in ("predictor", "transformer") if replica[role].get("pid")]
    return pids + [standby["pid"] for standby in state.get("standby") or []]
