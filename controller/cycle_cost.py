"""What the controller itself costs per cycle, beside the work it orders.

Trials run in worker processes (local or Ray), so the daemon process's own CPU time while a
cycle runs is the controller's: graph steps, Optuna's sampler, the store, the audit log,
checkpoints, artefact checks. Evaluation and drift scoring also run in the daemon, but they
are work the cycle orders and are booked on the ledger, so their CPU (``BookedCpu``: the
booked windows' CPU seconds, of every line, since the process clock counts every thread)
is taken out. The rest is turned into estimated joules (CPU seconds x the policy's watts
per core) and a share of the cycle's energy.

``time.process_time`` counts every thread of the process: with serving or other lines in
the same daemon the figure is an upper bound on this line's controller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class BookedCpu:
    """CPU seconds of the in-process work booked on the ledger (evaluation, drift, the live
    watch's scoring) by every line of the daemon. One per daemon: the process clock counts
    every line's threads, so every line's booked work is taken out of each line's figure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0.0

    def add(self, cpu_seconds: float) -> None:
        with self._lock:
            self._total += cpu_seconds

    @property
    def total(self) -> float:
        with self._lock:
            return self._total


class CycleCpu:
    """Controller CPU seconds per cycle, summed over the segments this process ran of it
    (a cycle paused for a person, or resumed after a restart, runs in several)."""

    def __init__(self, in_process: Callable[[], float]) -> None:
        self._in_process = in_process
        self._spent: dict[str, float] = {}

    def mark(self) -> tuple[float, float]:
        """The clocks at the start of a segment (before its cycle id may be known)."""
        return time.process_time(), self._in_process()

    def add(self, cycle_id: str, mark: tuple[float, float]) -> None:
        cpu0, booked0 = mark
        own = (time.process_time() - cpu0) - (self._in_process() - booked0)
        self._spent[cycle_id] = self._spent.get(cycle_id, 0.0) + max(0.0, own)

    def take(self, cycle_id: str) -> float | None:
        """The cycle's seconds, once; None when this process timed none of it (a resume
        that found the cycle already ended)."""
        return self._spent.pop(cycle_id, None)


def controller_figures(
    cpu_s: float | None,
    watts_per_core: float,
    train_joules: float,
    eval_joules: float,
    upper_bound: bool = False,
) -> dict[str, Any]:
    """The cycle summary's controller figures: CPU seconds, estimated joules and their
    share of everything the cycle spent (training, evaluation and the controller); None
    where nothing was timed. ``upper_bound``: serving or other lines ran in this process,
    and the process clock counted them too."""
    labels = {"controller_energy": "estimated", "controller_upper_bound": upper_bound}
    if cpu_s is None:
        nothing = ("controller_cpu_s", "controller_joules", "controller_share_pct")
        return dict.fromkeys(nothing) | labels
    joules = cpu_s * watts_per_core
    total = train_joules + eval_joules + joules
    return {
        "controller_cpu_s": round(cpu_s, 3),
        "controller_joules": round(joules, 3),
        "controller_share_pct": round(100.0 * joules / total, 3) if total > 0 else None,
        **labels,
    }
