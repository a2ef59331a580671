"""The local serving controller: revisions of N replicas, their processes and their readiness.

A revision serves one model version; it has ``settings.serving_replicas`` replicas (default 2), each
a predictor and a transformer process, like the pods of a KServe revision. The ingress sends a
request only to a *ready* replica:

- liveness is the process: the supervisor sees a replica's process exit at once (SIGCHLD), marks
  the replica unready and restarts the process on the same port;
- readiness is ``/v2/health/ready`` answering 200 (the model loaded, the explainer warmed): checked
  before a replica is first routed to, after every restart, and every ``PROBE_INTERVAL_S`` after;
- a revision whose model fails to load never becomes ready: the rollout fails with the load error.

Serving processes get an explicit environment built from the settings (``Settings.serving_env``),
their own working directory and log files, and die with the ingress (``PR_SET_PDEATHSIG``); the
ingress itself runs in its own session, so serving outlives whatever started it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable

import httpx

from mlops_assets.atomic import atomic_write_text
from mlops_assets.serving.revision import Child, Replica, Revision, Router, free_port
from mlops_assets.serving.standby import StandbyPool, can_restore_priority
from mlops_assets.serving.validation import ServingError
from mlops_assets.settings import Settings

log = logging.getLogger("mlops.serving.controller")

READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 30.0
PROBE_INTERVAL_S = 2.0
PROBE_FAILURES_UNREADY = 2
CRASHES_BEFORE_ROLLBACK = 3
CRASH_WINDOW_S = 60.0


class ControllerError(ServingError):
    status = 409


def write_json_atomically(path: Path, content) -> None:
    atomic_write_text(path, json.dumps(content, indent=2))


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the ingress dies, so nothing is orphaned."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _standby_preexec(niceness: int) -> None:
    _die_with_parent()
    os.nice(niceness)


class Controller:
    """Starts, stops and supervises the revisions; every deployment change goes through one lock."""

    def __init__(self, settings: Settings, model_name: str, port: int, max_request_bytes: int,
                 on_change: Callable[[], None] | None = None):
        self.settings = settings
        self.model_name = model_name
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.replicas = settings.serving_replicas
        self.hold_s = settings.serving_hold_s
        self.entity = settings.dataset_spec().entity  # a V1 instance's entity id picks its revision (sticky)
        self.on_change = on_change  # the ingress's index of every model (ingress.json, scrape targets)
        self.router = Router(model_name)
        self.lock = asyncio.Lock()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0),
                                        limits=httpx.Limits(max_connections=200, max_keepalive_connections=64))
        self.log_dir = settings.logs_dir / "serving"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = settings.serving_dir / "run"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = _now()
        self.online_gate: dict | None = None  # the A/B policy the canary is judged by, if any
        self._ready_event = asyncio.Event()
        # warm processes for the next revision (serving/standby.py), topped up when deployment is quiet
        standby = self.replicas if settings.serving_standby is None else settings.serving_standby
        self.standby = StandbyPool(standby, self.log_dir, self._start_process)

    def _rollout_under_way(self) -> bool:
        """A deployment change in progress, or a canary taking traffic: no standby imports now."""
        return self.lock.locked() or self.router.canary is not None

    def start_standby(self) -> None:
        """Fill the warm pool now (called on the ingress's event loop once it runs)."""
        self.standby.refill_later(self._rollout_under_way, delay=0.0)

    # --- readiness -----------------------------------------------------------------------------
    def _notify_ready(self) -> None:
        """Wake the requests held while a revision had no ready replica."""
        self._ready_event.set()
        self._ready_event = asyncio.Event()

    async def wait_for_readiness_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # --- deployment changes ------------------------------------------------------------------
    async def deploy(self, model_version: str | None, percent: int, as_canary: bool, mode: str = "canary",
                     gate: dict | None = None) -> dict:
        """``mode="shadow"``: the new revision gets copies of the traffic, never answers a client.
        ``gate``: the online A/B policy the canary is judged by, kept in the state for the judge."""
        async with self.lock:
            router = self.router
            if as_canary and router.stable is not None:
                new = await self._start_revision("canary", model_version)
                old_canary = router.canary
                router.set(router.stable, new, percent, mode)
                # The window starts when the canary gets traffic (it was started and became ready before).
                self.online_gate = {**gate, "canary_version": new.model_version, "started_at": _now(),
                                    "stable_version": router.stable.model_version} if gate else None
                await self._retire(old_canary)
            else:
                new = await self._start_revision("stable", model_version)
                old = [router.stable, router.canary]
                router.set(new, None, 0)
                self.online_gate = None
                for revision in old:
                    await self._retire(revision)
            self.write_state()
            if not as_canary or router.canary is None:  # a canary's rollout is not over yet
                self.standby.refill_later(self._rollout_under_way)
            return self.state()

    async def set_traffic(self, percent: int) -> dict:
        async with self.lock:
            if self.router.canary is None:
                raise ControllerError("there is no canary to send traffic to")
            self.router.set(self.router.stable, self.router.canary, percent, self.router.mode)
            self.write_state()
            return self.state()

    async def promote(self) -> dict:
        """The canary takes all traffic and becomes the stable revision; the old stable stops."""
        async with self.lock:
            old, canary = self.router.stable, self.router.canary
            if canary is None:
                raise ControllerError("there is no canary to promote")
            self.router.set(canary, None, 0)
            self.online_gate = None
            await self._retire(old)
            self.write_state()
            self.standby.refill_later(self._rollout_under_way)
            return self.state()

    async def rollback(self) -> dict:
        async with self.lock:
            canary = self.router.canary
            if canary is None:
                raise ControllerError("there is no canary to roll back")
            self.router.set(self.router.stable, None, 0)
            self.online_gate = None
            await self._retire(canary)
            self.write_state()
            self.standby.refill_later(self._rollout_under_way)
            return self.state()

    async def stop_all(self) -> None:
        async with self.lock:
            revisions = [self.router.stable, self.router.canary]
            self.router.set(None, None, 0)
            for revision in revisions:
                await self._retire(revision, drain=False)
            await self.standby.stop()
            self.write_state(running=False)
        await self.client.aclose()

    # --- processes ---------------------------------------------------------------------------
    def _replica(self, name: str, index: int, model_version: str | None, stamp: str) -> Replica:
        predictor_port, transformer_port = free_port(), free_port()
        common = [sys.executable, "-m", "mlops_assets.serving", "--model_name", self.model_name,
                  "--revision", name, "--max_request_bytes", str(self.max_request_bytes)]
        prefix = self.log_dir / f"{stamp}-{name}-{index}"
        predictor = Child("predictor", predictor_port,
                          common + ["--role", "predictor", "--http_port", str(predictor_port)]
                          + (["--model_version", str(model_version)] if model_version else []),
                          Path(f"{prefix}-predictor-{predictor_port}.log"))
        transformer = Child("transformer", transformer_port,
                            common + ["--role", "transformer", "--http_port", str(transformer_port),
                                      "--predictor_host", f"127.0.0.1:{predictor_port}"],
                            Path(f"{prefix}-transformer-{transformer_port}.log"))
        return Replica(index, predictor, transformer)

    async def _start_revision(self, name: str, model_version: str | None) -> Revision:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        replicas = [self._replica(name, i, model_version, stamp) for i in range(self.replicas)]
        revision = Revision(name, model_version, replicas, _now())
        try:
            await asyncio.gather(*(self._spawn(child) for child in revision.children))
            ready = await asyncio.gather(*(self._wait_ready(child) for child in revision.children))
        except BaseException:
            await self._retire(revision, drain=False)
            raise
        revision.model_version = str(ready[0].get("model_version") or model_version)
        for child in revision.children:
            child.up = True
            asyncio.get_running_loop().create_task(self._supervise(revision, child))
            asyncio.get_running_loop().create_task(self._probe(child))
        log.info("revision %s (model version %s) ready with %d replicas", name, revision.model_version,
                 len(replicas))
        return revision

    async def _spawn(self, child: Child) -> None:
        """Start ``child``: from a warm standby process if one is there, else cold."""
        standby = self.standby.take(child.role)
        if standby is not None:
            child.process, child.log_path = await self.standby.assign(standby, child.argv, child.log_path)
            return
        child.process = await self._start_process(child.argv, child.log_path)

    async def _start_process(self, argv: list[str], log_path: Path,
                             stdin=asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
        preexec = _die_with_parent
        if argv[-2:-1] == ["--standby"]:
            stdin = asyncio.subprocess.PIPE  # it waits there for its arguments
            # its imports yield the CPU to serving; it takes back normal priority once assigned
            nice = self.settings.serving_standby_niceness
            if nice and can_restore_priority():
                preexec = partial(_standby_preexec, nice)
        with open(log_path, "ab") as out:
            return await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=stdin,
                env=self.settings.serving_env(), cwd=str(self.work_dir), preexec_fn=preexec)

    async def _wait_ready(self, child: Child, timeout: float = READY_TIMEOUT_S) -> dict:
        """Wait for readiness; a process that exits or reports a load error fails at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise ControllerError(f"{child.role} exited with code {child.process.returncode} before it was "
                                      f"ready: {_tail(child.log_path)}")
            try:
                response = await self.client.get(f"{child.url}/v2/health/ready", timeout=2.0)
                if response.status_code == 200:
                    return response.json()
                error = _json(response).get("error")
                if error:
                    raise ControllerError(f"{child.role} cannot serve: {error}")
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        raise ControllerError(f"{child.role} on port {child.port} not ready after {timeout:.0f} s: "
                              f"{_tail(child.log_path)}")

    async def _supervise(self, revision: Revision, child: Child) -> None:
        """Restart ``child`` whenever it dies unasked; roll a crash-looping canary back."""
        while True:
            code = await child.process.wait()
            died = time.monotonic()
            child.up = False
            if child.stopping:
                return
            child.crashes = [t for t in child.crashes if died - t < CRASH_WINDOW_S] + [died]
            log.warning("%s %s (pid %d) exited with %s; restarting", revision.name, child.role,
                        child.process.pid, code)
            if revision.name == "canary" and len(child.crashes) >= CRASHES_BEFORE_ROLLBACK:
                log.error("canary %s crashed %d times in %.0f s: rolling back", child.role,
                          len(child.crashes), CRASH_WINDOW_S)
                asyncio.get_running_loop().create_task(self._rollback_quietly())
                return
            await asyncio.sleep(min(0.1 * 2 ** (len(child.crashes) - 1), 5.0))
            if child.stopping:
                return
            await self._spawn(child)  # a standby if the pool has one: back sooner
            try:
                await self._wait_ready(child)
            except ControllerError as exc:
                log.error("restart of %s %s failed: %s", revision.name, child.role, exc)
            else:
                child.up, child.probe_ok = True, True
                self._notify_ready()
                child.restart_to_ready_s.append(time.monotonic() - died)
                log.warning("%s %s ready again %.2f s after it died", revision.name, child.role,
                            child.restart_to_ready_s[-1])
            self.write_state()

    async def _probe(self, child: Child) -> None:
        """Readiness probe of a running process: a process failing it is not routed to until it
        passes again (its liveness, the process itself, is the supervisor's business)."""
        failures = 0
        while not child.stopping:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if child.stopping or not child.up:
                failures = 0
                continue
            try:
                ok = (await self.client.get(f"{child.url}/v2/health/ready", timeout=2.0)).status_code == 200
            except httpx.TransportError:
                ok = False
            failures = 0 if ok else failures + 1
            if child.probe_ok and failures >= PROBE_FAILURES_UNREADY:
                log.warning("%s on port %d failed %d readiness probes: not routed to", child.role,
                            child.port, failures)
            was_ok, child.probe_ok = child.probe_ok, ok or (child.probe_ok and failures < PROBE_FAILURES_UNREADY)
            if child.probe_ok and not was_ok:
                self._notify_ready()

    async def _rollback_quietly(self) -> None:
        try:
            await self.rollback()
        except ControllerError:
            pass

    async def _retire(self, revision: Revision | None, drain: bool = True) -> None:
        """Stop a revision no longer routed to, once the requests it is serving have finished."""
        if revision is None:
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while drain and revision.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for child in revision.children:
            child.stopping = True
            child.up = False
        await asyncio.gather(*(_terminate(child) for child in revision.children))

    # --- state -------------------------------------------------------------------------------
    def state(self, running: bool = True) -> dict:
        def describe(revision: Revision | None) -> dict | None:
            if revision is None:
                return None
            replicas = [{"predictor": r.predictor.describe(), "transformer": r.transformer.describe(),
                         "ready": r.ready} for r in revision.replicas]
            # "predictor"/"transformer": the first replica's, for clients that address one server.
            return {"model_version": revision.model_version, "started_at": revision.started_at,
                    "ready_replicas": sum(r["ready"] for r in replicas), "replicas": replicas,
                    "predictor": replicas[0]["predictor"], "transformer": replicas[0]["transformer"]}

        return {"running": running, "model_name": self.model_name,
                "endpoint": f"http://127.0.0.1:{self.port}",
                "ingress": {"pid": os.getpid(), "port": self.port, "started_at": self.started_at},
                "replicas_per_revision": self.replicas, "hold_seconds": self.hold_s,
                "canary_percent": self.router.canary_percent, "mode": self.router.mode,
                "online_gate": self.online_gate,
                "revisions": {"stable": describe(self.router.stable), "canary": describe(self.router.canary)},
                "standby": self.standby.pids(),
                "updated_at": _now()}

    def write_state(self, running: bool = True) -> None:
        write_json_atomically(self.settings.serving_dir / "state.json", self.state(running))
        if self.on_change is not None:
            self.on_change()


async def _terminate(child: Child, grace: float = 15.0) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    process.terminate()  # uvicorn finishes in-flight requests on SIGTERM
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
