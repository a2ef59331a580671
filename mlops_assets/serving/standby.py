"""A warm pool of serving processes: started ahead of a rollout, they import their role's libraries
(kserve, MLflow, scikit-learn, SHAP with its JIT-compiled code paths; Feast for the transformer) and
then wait on stdin for the command line of the replica they become.

On this machine a cold predictor spends most of its start in imports and in SHAP's first explanation
(numba compiles its masking code: about 16 s on a loaded 2-core machine, 0.01 s afterwards); a warm
one only loads its model version and warms the explainer on it, so readiness keeps its meaning (model
loaded and explainer warmed before ``/v2/health/ready`` says 200). Standby processes run at niceness
``MLOPS_SERVING_STANDBY_NICENESS`` (default 10) until assigned (when they can take priority 0 back), so their imports yield the
CPU to the replicas serving traffic. The pool is refilled once the
deployment has been quiet for ``REFILL_DELAY_S`` and no canary takes traffic, so the imports never
compete with a rollout's smoke test. A replica restarted after a crash takes a standby as well when
the pool has one.

Process side: ``python -m mlops_assets.serving --standby predictor|transformer``
(:func:`wait_for_assignment`). Controller side: :class:`StandbyPool`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("mlops.serving.standby")

ROLES = ("predictor", "transformer")
REFILL_DELAY_S = 5.0
# prometheus_client before Feast: importing Feast sets PROMETHEUS_MULTIPROC_DIR, which must not switch
# this server's metrics to multiprocess mode (a cold server imports them in the same order).
PRELOAD = {
    "predictor": ("prometheus_client", "mlops_assets.serving.server", "mlops_assets.serving.predictor",
                  "mlflow", "mlflow.sklearn", "mlflow.models", "scipy.special", "sklearn.pipeline",
                  "sklearn.compose", "sklearn.preprocessing", "sklearn.linear_model", "sklearn.ensemble",
                  "sklearn.impute", "shap"),
    "transformer": ("prometheus_client", "mlops_assets.serving.server", "mlops_assets.serving.transformer",
                    "mlops_assets.monitoring.sink_client", "kserve.predictor_config", "feast",
                    "feast.repo_config", "feast.infra.online_stores.sqlite"),
}


def preload(role: str) -> None:
    started = time.perf_counter()
    for module in PRELOAD[role]:
        try:
            if module == "feast":  # as the server imports it: without typeguard's instrumentation
                from mlops_assets.features.feast_import import import_feast

                import_feast()
            else:
                importlib.import_module(module)
        except ImportError as exc:  # an optional backend missing: the server imports what it needs
            log.warning("standby %s: cannot preload %s: %s", role, module, exc)
    warm_ups = (_open_registry, _compile_shap) if role == "predictor" else (_open_feature_store,)
    for warm_up in warm_ups:
        try:
            warm_up()
        except Exception as exc:  # best effort: the server's own load does it all again if needed
            log.warning("standby %s: %s failed: %s: %s", role, warm_up.__name__, type(exc).__name__, exc)
    log.warning("standby %s: libraries loaded in %.1f s", role, time.perf_counter() - started)


class _Stand_inModel:
    """predict_proba of a made-up model over the dataset's features."""

    def __init__(self, numeric: list[str]):
        self.numeric = numeric

    def predict_proba(self, frame):
        import numpy as np

        score = 1 / (1 + np.exp(-frame[self.numeric].to_numpy(dtype=float).sum(axis=1) / 100))
        return np.column_stack([1 - score, score])


def _compile_shap() -> None:
    """One explanation through the predictor's own ``shap_values`` with rows of the dataset's
    schema (the same dtypes as a model's background): numba compiles SHAP's masking code for these
    types once per process, in the standby rather than in a rollout."""
    import numpy as np
    import pandas as pd

    from mlops_assets.serving.predictor import shap_values
    from mlops_assets.serving.validation import INTEGER, STRING, FeatureSchema
    from mlops_assets.settings import get_settings

    schema = FeatureSchema.from_spec(get_settings().dataset_spec())
    rng = np.random.default_rng(0)
    columns = {}
    for name in schema.names:
        kind = schema.kinds[name]
        columns[name] = (rng.choice(["a", "b", "c"], 11).astype(object) if kind == STRING else
                         rng.integers(0, 50, 11) if kind == INTEGER else rng.random(11) * 50)
    frame = pd.DataFrame(columns)
    numeric = [name for name in schema.names if schema.kinds[name] != STRING]
    shap_values(_Stand_inModel(numeric), frame.iloc[:10], frame.iloc[10:].reset_index(drop=True), schema)


def _open_registry() -> None:
    """Connect to the MLflow store once (SQLAlchemy engine, schema check) and import skops, which
    ``mlflow.sklearn.load_model`` uses (seconds each)."""
    import mlflow
    from mlflow import MlflowClient

    from mlops_assets.settings import get_settings

    importlib.import_module("skops.io")
    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    MlflowClient().search_registered_models(max_results=1)


def _open_feature_store() -> None:
    """One online read through a throw-away store: Feast imports most of its read path lazily.
    The transformer opens its own store once assigned (the registry may change until then)."""
    from mlops_assets.features.store import FeatureStoreClient
    from mlops_assets.settings import get_settings

    client = FeatureStoreClient(get_settings())
    client.online_features([0], client.feature_refs())


def wait_for_assignment(role: str) -> list[str]:
    """Preload, then block until the controller sends this process's arguments (one JSON line)."""
    if role not in ROLES:
        raise SystemExit(f"--standby takes one of {', '.join(ROLES)}, got {role!r}")
    from mlops_assets.serving.server import configure_logging

    configure_logging()
    preload(role)
    line = sys.stdin.readline()
    if not line:  # the controller went away or retired this standby
        raise SystemExit(0)
    argv = json.loads(line)
    sys.argv = [sys.argv[0], *argv]
    take_back_priority(role)
    return argv


def take_back_priority(role: str) -> None:
    """Started niced by the controller: serve at normal priority."""
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            log.warning("standby %s: cannot restore normal priority (RLIMIT_NICE); serving niced", role)


def can_restore_priority() -> bool:
    """Whether a niced standby can take back priority 0 once assigned (root, or RLIMIT_NICE >= 20);
    otherwise standby processes start at normal priority."""
    import resource

    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


@dataclass
class Standby:
    role: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class StandbyPool:
    """``size`` standby processes per role, spawned with the same environment, working directory and
    parent-death signal as the replicas they become."""

    def __init__(self, size: int, log_dir: Path, spawn: Callable):
        self.size = size
        self.log_dir = log_dir
        self._spawn = spawn  # async (argv, log_path, stdin) -> Process
        self._pool: list[Standby] = []
        self._refill: asyncio.Task | None = None
        self._quiet_since = time.monotonic()
        self._counter = 0

    def take(self, role: str) -> Standby | None:
        self._pool = [s for s in self._pool if s.alive]
        for standby in self._pool:
            if standby.role == role:
                self._pool.remove(standby)
                return standby
        return None

    @staticmethod
    async def assign(standby: Standby, argv: list[str], log_path: Path) -> tuple[asyncio.subprocess.Process, Path]:
        """The standby becomes the replica ``argv`` (``python -m mlops_assets.serving ...``) describes;
        its log moves to ``log_path``. Returns the process and where its log is."""
        try:
            os.replace(standby.log_path, log_path)
        except OSError:
            log_path = standby.log_path
        standby.process.stdin.write((json.dumps(argv[3:]) + "\n").encode())
        await standby.process.stdin.drain()
        standby.process.stdin.close()
        return standby.process, log_path

    def refill_later(self, busy: Callable[[], bool], delay: float = REFILL_DELAY_S) -> None:
        """Top the pool up once no deployment change has happened for ``delay`` seconds and none is
        under way (at the ingress's start: at once, for its first revision)."""
        self._quiet_since = time.monotonic()
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._refill_when_quiet(busy, delay))

    async def _refill_when_quiet(self, busy: Callable[[], bool], delay: float) -> None:
        while time.monotonic() - self._quiet_since < delay or (delay and busy()):
            await asyncio.sleep(0.5)
        self._pool = [s for s in self._pool if s.alive]
        for role in ROLES:
            for _ in range(self.size - sum(s.role == role for s in self._pool)):
                self._counter += 1
                path = self.log_dir / f"standby-{os.getpid()}-{self._counter}-{role}.log"
                argv = [sys.executable, "-m", "mlops_assets.serving", "--standby", role]
                self._pool.append(Standby(role, await self._spawn(argv, path), path))

    def pids(self) -> list[dict]:
        return [{"role": s.role, "pid": s.process.pid} for s in self._pool if s.alive]

    async def stop(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
        standbys, self._pool = self._pool, []
        for standby in standbys:
            if standby.alive:
                standby.process.terminate()
        for standby in standbys:
            try:
                await asyncio.wait_for(standby.process.wait(), 10)
            except asyncio.TimeoutError:
                standby.process.kill()
