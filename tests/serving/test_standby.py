"""The warm pool's bookkeeping with stand-in processes (no model servers): a standby becomes the
replica it is given (arguments on stdin, log moved to the replica's name), the pool refills only once
deployment is quiet, and stopping it leaves no process behind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from mlops_assets.serving import standby as standby_module
from mlops_assets.serving.standby import StandbyPool

# Echoes the arguments it is given, like a standby that becomes a replica and exits.
ECHO = "import sys, json; print('preloaded', flush=True); print('assigned', json.loads(sys.stdin.readline()))"


def _pool(tmp_path: Path) -> StandbyPool:
    async def spawn(argv: list[str], log_path: Path):
        assert argv[-2] == "--standby"
        with open(log_path, "ab") as out:
            return await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, stdin=asyncio.subprocess.PIPE,
                                                        stdout=out, stderr=asyncio.subprocess.STDOUT)

    return StandbyPool(2, tmp_path, spawn)


def test_a_standby_becomes_the_replica_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(standby_module, "REFILL_DELAY_S", 0.0)

    async def scenario():
        pool = _pool(tmp_path)
        pool.refill_later(lambda: False, delay=0.0)
        await pool._refill
        assert sorted(s["role"] for s in pool.pids()) == ["predictor", "predictor", "transformer", "transformer"]
        taken = pool.take("predictor")
        argv = [sys.executable, "-m", "mlops_assets.serving", "--role", "predictor", "--http_port", "1234"]
        process, log_path = await pool.assign(taken, argv, tmp_path / "stable-0-predictor-1234.log")
        assert await process.wait() == 0
        assert log_path == tmp_path / "stable-0-predictor-1234.log"
        assert log_path.read_text().splitlines() == ["preloaded", "assigned ['--role', 'predictor', '--http_port', '1234']"]
        assert sorted(s["role"] for s in pool.pids()) == ["predictor", "transformer", "transformer"]
        await pool.stop()
        assert pool.pids() == [] and pool.take("transformer") is None

    asyncio.run(scenario())


def test_the_pool_refills_only_when_no_deployment_is_under_way(tmp_path):
    async def scenario():
        pool = _pool(tmp_path)
        busy = True
        pool.refill_later(lambda: busy, delay=0.2)
        await asyncio.sleep(0.8)
        assert pool.pids() == [], "refilled during a deployment change"
        busy = False
        await asyncio.wait_for(pool._refill, 10)
        assert len(pool.pids()) == 4
        await pool.stop()

    asyncio.run(scenario())


# Reports its priority while waiting, takes its assignment like a standby, reports it again.
PRIORITY = ("import os, sys; from mlops_assets.serving.standby import take_back_priority; "
            "print('waiting', os.getpriority(os.PRIO_PROCESS, 0), flush=True); sys.stdin.readline(); "
            "take_back_priority('predictor'); print('serving', os.getpriority(os.PRIO_PROCESS, 0), flush=True)")


def test_a_standby_imports_niced_and_serves_at_normal_priority(tmp_path):
    from mlops_assets.serving.controller import Controller
    from mlops_assets.serving.standby import can_restore_priority
    from mlops_assets.settings import SettingsError, get_settings

    for niceness, expected in (("", 10), ("7", 7), ("0", 0)):  # default, set, off
        env = {"MLOPS_HOME": str(tmp_path), "MLOPS_SERVING_STANDBY": "0", "MLOPS_SERVING_STANDBY_NICENESS": niceness}
        controller = Controller(get_settings(env), "churn", port=1, max_request_bytes=1024)
        log_path = tmp_path / f"standby-{niceness}.log"

        async def scenario():
            process = await controller._start_process([sys.executable, "-c", PRIORITY, "--standby", "predictor"],
                                                      log_path)
            await StandbyPool.assign(standby_module.Standby("predictor", process, log_path), ["a", "b", "c", "d"],
                                     log_path)
            assert await process.wait() == 0

        asyncio.run(scenario())
        niced = expected if can_restore_priority() else 0
        assert log_path.read_text().split() == ["waiting", str(niced), "serving", "0"], niceness
    for bad in ("20", "-1", "high"):
        with pytest.raises(SettingsError, match="MLOPS_SERVING_STANDBY_NICENESS"):
            get_settings({"MLOPS_SERVING_STANDBY_NICENESS": bad})
