"""CPU time per request of each serving process, read from /proc (Linux).

Wall-clock latency on a shared 2-core machine moves with the load of the other tenants; the CPU a
process spends per request barely does, and at a fixed request rate the tail follows it. The
serving benchmark reads ``utime + stime`` of every process of a target before and after a run and
divides by the requests answered.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far (its threads included; children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # fields 14 and 15 of proc(5)


def snapshot(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far, summed over the processes of each role (e.g. both replicas' transformers)."""
    return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def per_request_ms(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request by role, and their ``total``."""
    cost = {role: round((after[role] - before[role]) * 1000 / requests, 3) for role in before}
    cost["total"] = round(sum(cost.values()), 3)
    return cost


def with_descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``mlflow models serve`` runs its server as a child)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            children = Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(child) for child in children]
        i += 1
    return pids


def serving_roles(state: dict) -> dict[str, list[int]]:
    """The processes of a local deployment (``state.json``): the ingress, then every replica's
    transformer and predictor, stable and canary revisions together."""
    roles: dict[str, list[int]] = {"ingress": [state["ingress"]["pid"]], "transformer": [], "predictor": []}
    for revision in (state.get("revisions") or {}).values():
        for replica in (revision or {}).get("replicas") or []:
            for role in ("transformer", "predictor"):
                if replica[role].get("pid"):
                    roles[role].append(replica[role]["pid"])
    return roles
