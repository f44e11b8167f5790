"""The cluster seam: run one training trial somewhere and report back.

Contract: `run` blocks until the trial ends and never raises for a trial's own failure
(a crash, an exception, a NaN, a lost node); those come back as a `TrialOutcome` with status
"failed". It returns status "interrupted" when `should_stop` turned true (the daemon is
shutting down): the trial was stopped and may be run again with the same parameters.
`run` may be called from several threads at once (parallel trials); each call runs its own
trial in its own worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from adapters.energy import EnergyReading
from adapters.workload.protocol import TrainProgress, TrainRequest, TrainResult


@dataclass(frozen=True)
class TrialJob:
    key: str
    workload: str
    request: TrainRequest
    watts_per_core: float = 15.0
    prefer_gpu: bool = True
    max_joules: float | None = None
    # NVML indices of the GPUs the trial runs on, which its meter reads (None: the device
    # the request names, cuda:0 for "cuda" or "auto")
    gpu_indices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TrialOutcome:
    status: Literal["ok", "failed", "interrupted"]
    result: TrainResult | None = None
    energy: EnergyReading | None = None
    error: str = ""
    exit_code: int | None = None
    energy_note: str = ""
    stop_reason: str = ""  # why the worker stopped early, e.g. "energy share spent"
    # a fresh worker's start-up (torch import, CUDA context), measured apart from the trial
    startup_energy: EnergyReading | None = None
    worker_pid: int | None = None
    worker_trial: int = 0  # 1 for a fresh worker's first trial, 2 for its second, ...
    node: str = ""  # where it ran: "local:<host>" or "ray:<node id>@<ip>"
    lost: tuple[str, ...] = ()  # earlier attempts lost with their node, and why (retried)


class Cluster(Protocol):
    @property
    def description(self) -> str:
        """One line for the start-up audit event: where and how trials run."""
        ...

    def run(
        self,
        job: TrialJob,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrialOutcome: ...

    def close(self) -> None:
        """Free whatever the cluster keeps between trials (idle workers)."""
        ...


@runtime_checkable
class ClusterView(Protocol):
    """A cluster that can say what it is made of, for `aifactory status`."""

    def status(self) -> dict[str, Any]:
        """Its kind, nodes (with their resources) and trials running where."""
        ...
