"""Running one trial inside whatever process hosts it (a local worker, a Ray actor): meter
its energy, train through the workload protocol, report progress, stop when told or when its
energy share is spent.

A fresh host measures its start-up (torch import, CUDA context) in a window of its own and
reports it beside its first trial's reading, so the day's ledger counts it but the trial's
cost, which tuning compares across trials, does not.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.cluster.base import TrialJob
from adapters.energy import EnergyMeter, EnergyReading, probe_energy_meter
from adapters.workload.loader import load_workload
from adapters.workload.protocol import TrainProgress, TrainResult

#: How often the trial's energy is read against its share (seconds).
ENERGY_CHECK_S = 1.0

Meters = dict[tuple[bool, float, tuple[int, ...]], tuple[EnergyMeter, str]]


@dataclass(frozen=True)
class Execution:
    """What one trial produced where it ran."""

    result: TrainResult
    reading: EnergyReading
    note: str  # how the energy was measured
    stop_reason: str | None  # "stopped", "parent died", "energy share spent", or None
    startup: EnergyReading | None  # a fresh host's start-up, measured apart


def execute_trial(
    job: TrialJob,
    meters: Meters,
    fresh: bool,
    progress: Callable[[TrainProgress], None],
    poll_stop: Callable[[], str | None],
) -> Execution:
    """Train ``job``; ``poll_stop`` says why to stop (None: go on). Raises what the workload
    raises: the host reports it as the trial's failure."""
    startup, usable = start_up(job, meters) if fresh else (None, None)
    import torch

    if usable is None:
        usable = torch.cuda.is_available()
    meter, note, window = _begin(job, meters, usable)
    torch.set_num_threads(max(1, job.request.threads))
    workload = load_workload(job.workload)
    state: dict[str, Any] = {"stop": None, "checked": 0.0}

    def should_stop() -> bool:
        if state["stop"] is None:
            state["stop"] = poll_stop()
        now = time.monotonic()
        if (
            state["stop"] is None
            and job.max_joules is not None
            and now - state["checked"] > (ENERGY_CHECK_S)
        ):
            state["checked"] = now
            if meter.end(window).joules >= job.max_joules:
                state["stop"] = "energy share spent"
        return state["stop"] is not None

    result = workload.train(job.request, progress=progress, should_stop=should_stop)
    return Execution(result, meter.end(window), note, state["stop"], startup)


def _meter(job: TrialJob, meters: Meters, gpu_usable: bool | None) -> tuple[EnergyMeter, str]:
    """The meter this job asks for, probed once per host and kept; re-probed if it broke.
    It reads the trial's own GPU(s) only: a board shared with another trial would be
    charged twice."""
    gpu = job.prefer_gpu and job.request.device != "cpu" and gpu_usable is not False
    indices = _gpu_indices(job) if gpu else ()
    wanted = (gpu, job.watts_per_core, indices)
    if wanted not in meters:
        meters[wanted] = probe_energy_meter(
            prefer_gpu=gpu, watts_per_core=job.watts_per_core, device_indices=indices or None
        )
    return meters[wanted]


def _gpu_indices(job: TrialJob) -> tuple[int, ...]:
    if job.gpu_indices is not None:
        return job.gpu_indices
    device = job.request.device
    if device.startswith("cuda:") and device[5:].isdigit():
        return (int(device[5:]),)
    return (0,)


def _begin(
    job: TrialJob, meters: Meters, gpu_usable: bool | None
) -> tuple[EnergyMeter, str, object]:
    meter, note = _meter(job, meters, gpu_usable)
    try:
        return meter, note, meter.begin()
    except Exception:  # e.g. the GPU went away while we idled: probe again (may fall back)
        meters.clear()
        meter, note = _meter(job, meters, gpu_usable)
        return meter, note, meter.begin()


def start_up(job: TrialJob, meters: Meters) -> tuple[EnergyReading | None, bool]:
    """Import torch and create the CUDA context inside a window of their own."""
    meter, _, window = _begin(job, meters, None)
    import torch

    usable = torch.cuda.is_available()
    if usable and job.prefer_gpu and job.request.device != "cpu":
        with contextlib.suppress(Exception):  # a bad device string fails in the workload
            device = job.request.device
            torch.zeros(1, device="cuda" if device in ("auto", "cuda") else device)
    reading = meter.end(window)
    if meter.method == "measured" and not usable:
        return None, usable  # it metered a board the trial will not use
    return reading, usable


def close_meters(meters: Meters) -> None:
    for meter, _ in meters.values():
        with contextlib.suppress(Exception):
            meter.close()  # type: ignore[attr-defined]
    meters.clear()


def free_gpu_cache() -> None:
    """Give cached GPU memory back between trials, so an idle host holds only its context."""
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
