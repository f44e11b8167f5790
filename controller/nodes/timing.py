"""Stage timing: each node's wall time goes into the cycle state (`stage_s`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from controller.context import CycleState

Node = Callable[[CycleState], dict[str, Any]]


def timed(name: str, node: Node) -> Node:
    """Wrap a node so its time adds up under ``name`` (a canary runs once per step)."""

    def run(state: CycleState) -> dict[str, Any]:
        started = time.perf_counter()
        out = node(state)
        before = (state.get("stage_s") or {}).get(name, 0.0)
        out["stage_s"] = {name: round(before + time.perf_counter() - started, 3)}
        return out

    run.__name__ = name
    return run
