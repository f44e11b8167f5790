"""What a production line shows the factory: its heartbeat for `aifactory status` (with
where its trials run) and whether its endpoint serves what the registry says."""

from __future__ import annotations

import json
import os
from datetime import UTC
from pathlib import Path
from typing import Any, Protocol

from adapters.cluster.base import ClusterView
from adapters.store.db import utcnow_iso
from controller.context import LineContext
from controller.line_schedule import LineSchedule
from controller.overview import FactoryView
from controller.services import FactoryServices
from policies.factory import LineSpec


class ShownLine(Protocol):
    """What these views read of a production line (`controller/line.py`)."""

    services: FactoryServices
    schedule: LineSchedule
    ctx: LineContext
    path: Path
    spec: LineSpec

    @property
    def name(self) -> str: ...

    @property
    def alive(self) -> bool: ...


def heartbeat(line: ShownLine, stopped: bool = False) -> dict[str, Any]:
    """The line's row of `aifactory status`."""
    s = line.services
    job = s.scheduler.get_job(line.schedule.job_id("cycle")) if s.scheduler.running else None
    nxt = job.next_run_time if job is not None and not stopped else None
    endpoint = s.serving.server.line(line.name) if s.serving is not None else None
    served = endpoint.current if endpoint is not None and not stopped else None
    stopped = stopped or not line.alive  # a line whose thread ended is not running
    return {
        "pid": 0 if stopped else os.getpid(),
        "heartbeat_at": utcnow_iso(),
        "next_cycle_at": nxt.astimezone(UTC).isoformat() if nxt else None,
        "serving_url": "" if stopped or s.serving is None else s.serving.server.url,
        "served_version": served.version if served is not None else None,
        "console_url": "" if stopped else s.console_url,
        "policy_version": line.ctx.policy.version,
        "policy_path": str(line.path),
        "owner": line.spec.owner,
        "energy_source": s.energy_note,
        "cluster": json.dumps(cluster_view(line, stopped), sort_keys=True, default=str),
    }


def cluster_view(line: ShownLine, stopped: bool) -> dict[str, Any]:
    """Where this line's trials run: the cluster's nodes and trials running where."""
    cluster = line.ctx.cluster
    if stopped or not isinstance(cluster, ClusterView):
        return {}
    try:
        return cluster.status()
    except Exception as exc:  # a view is never worth a failed heartbeat
        return {"error": f"{type(exc).__name__}: {exc}"}


def serving_differs(line: ShownLine, view: FactoryView) -> bool:
    """Does the endpoint serve something other than the registry and rollout say?"""
    serving = line.services.serving
    if serving is None:
        return False
    endpoint = serving.server.line(line.name)
    current, challenger = endpoint.current, endpoint.challenger
    champion = view.champions.get(line.name)
    rollout = view.rollouts.get(line.name)
    if (current.version if current else None) != champion:
        return champion is not None
    if rollout is None or rollout.champion_version != champion:
        return challenger is not None
    return challenger is None or (
        challenger[0].version != rollout.challenger_version
        or abs(challenger[1] - rollout.weight_pct) > 1e-9
    )
