"""Energy measurement for training trials and evaluation windows.

Where it sits in the loop: this is the *observe* side. The energy agent and the
trial workers bracket a window of work with ``meter.begin()`` / ``meter.end(token)``
and get back an :class:`EnergyReading` (joules, wall seconds, process CPU seconds),
which the controller charges against the energy budget.

Two meters share one small protocol:

* :class:`NvmlEnergyMeter` -- *measured*: NVML's per-device energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since driver load), read
  only at the two window edges because each read costs a few milliseconds and the
  counter itself only advances about every 100 ms. The counter is device-wide, so
  it also includes other processes using the same GPUs.
* :class:`HostCpuEnergyMeter` -- *estimated*: CPU seconds of this process times a
  configured watts-per-core figure, plus an optional idle draw over wall time.

:func:`probe_energy_meter` tries NVML first and degrades to the host estimate with a
one-line reason, so a machine without a GPU still gets budget accounting, labelled
honestly as ``"estimated"``. Vendor (``pynvml``) errors never leave this module raw:
they are translated to :class:`GpuUnavailableError`, raised ``from`` the original.

Counter reset policy: the NVML counter is a 64-bit millijoule count, so a real wrap is
out of reach; a *decrease* therefore means the driver was reloaded or the GPU reset
mid-window. That window's energy is unknowable, and silently swapping in an estimate
would mix methods inside one ``"measured"`` series, so :meth:`NvmlEnergyMeter.end`
raises :class:`EnergyCounterResetError` instead; the caller decides whether to
re-run the window or to re-probe.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from adapters.gpu.base import GpuError, GpuUnavailableError

__all__ = [
    "EnergyCounterResetError",
    "EnergyMeter",
    "EnergyMeterError",
    "EnergyMethod",
    "EnergyReading",
    "GpuUnavailableError",
    "HostCpuEnergyMeter",
    "NvmlEnergyMeter",
    "probe_energy_meter",
]

EnergyMethod = Literal["measured", "estimated"]


@dataclass(frozen=True)
class EnergyReading:
    """Energy spent over one window, with how it was obtained so budgets stay honest."""

    joules: float
    seconds: float  # wall-clock seconds of the window
    method: EnergyMethod
    source: str  # e.g. "nvml:GPU-uuid0,GPU-uuid1" or "host-cpu-estimate(15.0 W/core)"
    cpu_seconds: float  # process CPU seconds in the window (always filled)


@runtime_checkable
class EnergyMeter(Protocol):
    """Measures energy over windows; begin() and end() bracket one window."""

    method: EnergyMethod

    def begin(self) -> object:
        """Open a window and return an opaque token for :meth:`end`."""
        ...

    def end(self, token: object) -> EnergyReading:
        """Close the window opened by ``token`` and report its energy."""
        ...


class EnergyMeterError(Exception):
    """Base for energy-meter failures, so callers can catch them in one place."""


class EnergyCounterResetError(EnergyMeterError):
    """An NVML energy counter went backwards inside a window (driver reload / GPU reset)."""


@dataclass(frozen=True)
class _Window:
    """Start-of-window snapshot; opaque to callers."""

    owner: int  # id() of the meter that opened it, to catch tokens passed to the wrong meter
    wall_start: float
    cpu_start: float
    counters_mj: tuple[int, ...] = ()


def _check_token(meter: object, token: object) -> _Window:
    """Reject tokens that did not come from this meter's begin()."""
    if not isinstance(token, _Window) or token.owner != id(meter):
        raise ValueError(f"token {token!r} was not returned by begin() of this meter")
    return token


def _validated_watts(watts_per_core: float, idle_w: float) -> tuple[float, float]:
    """Fail fast on nonsense power figures, which would otherwise corrupt every budget."""
    w = float(watts_per_core)
    idle = float(idle_w)
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"watts_per_core must be a finite number > 0, got {watts_per_core!r}")
    if not (math.isfinite(idle) and idle >= 0):
        raise ValueError(f"idle_w must be a finite number >= 0, got {idle_w!r}")
    return w, idle


class HostCpuEnergyMeter:
    """Estimated energy: this process's CPU seconds x watts_per_core (+ idle_w x wall seconds).

    ``time.process_time`` counts every thread of the process, so overlapping windows
    in one process each see the other's CPU time; use one window at a time per process
    when the per-window split matters.
    """

    method: EnergyMethod = "estimated"

    def __init__(self, watts_per_core: float = 15.0, idle_w: float = 0.0) -> None:
        self.watts_per_core, self.idle_w = _validated_watts(watts_per_core, idle_w)
        idle = f" + {self.idle_w} W idle" if self.idle_w else ""
        self.source = f"host-cpu-estimate({self.watts_per_core} W/core{idle})"

    def begin(self) -> object:
        """Snapshot wall and process CPU clocks."""
        return _Window(
            owner=id(self), wall_start=time.perf_counter(), cpu_start=time.process_time()
        )

    def end(self, token: object) -> EnergyReading:
        """Turn the CPU time spent since begin() into joules."""
        window = _check_token(self, token)
        cpu_seconds = max(0.0, time.process_time() - window.cpu_start)
        seconds = max(0.0, time.perf_counter() - window.wall_start)
        joules = cpu_seconds * self.watts_per_core + self.idle_w * seconds
        return EnergyReading(
            joules=joules,
            seconds=seconds,
            method=self.method,
            source=self.source,
            cpu_seconds=cpu_seconds,
        )

    def close(self) -> None:
        """Nothing to release; present so callers can close whatever meter they were given."""

    def __enter__(self) -> HostCpuEnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_name(err: BaseException) -> str:
    return type(err).__name__


class NvmlEnergyMeter:
    """Measured energy: summed NVML energy counters of the chosen GPUs, read at window edges.

    The constructor initialises NVML and checks that every chosen device exposes the
    energy counter, so a meter that exists is a meter that works (until the GPU falls
    off the bus, which surfaces as :class:`GpuUnavailableError` from begin()/end()).
    Only read-only NVML queries are made; no GPU setting is ever changed.

    Windows shorter than the counter's ~100 ms update period may read 0 J.
    """

    method: EnergyMethod = "measured"

    def __init__(
        self, device_indices: Sequence[int] | None = None, nvml: Any | None = None
    ) -> None:
        from adapters.gpu.nvml import NvmlGpu  # the one place that talks to NVML

        self._gpu = NvmlGpu(nvml=nvml)  # GpuUnavailableError, chained to the vendor error
        self._closed = False
        try:
            self._setup(device_indices)
        except BaseException:
            self.close()
            raise

    def _setup(self, device_indices: Sequence[int] | None) -> None:
        """Resolve devices and prove the energy counter is readable on each."""
        count = self._gpu.device_count
        if count <= 0:
            raise GpuUnavailableError("NVML reports no GPU devices", "no devices")
        if device_indices is None:
            indices = list(range(count))
        else:
            indices = [int(i) for i in device_indices]
            if not indices:
                raise ValueError("device_indices must not be empty (use None for all devices)")
            if len(set(indices)) != len(indices):
                raise ValueError(f"device_indices has duplicates, would double count: {indices}")
            missing = [i for i in indices if not 0 <= i < count]
            if missing:
                raise GpuUnavailableError(
                    f"GPU indices {missing} not present ({count} device(s) visible)",
                    f"no device {missing[0]}",
                )
        uuids: list[str] = []
        for index in indices:
            try:
                uuids.append(self._gpu.uuid(index))
                self._gpu.energy_j(index)
            except GpuError as err:
                raise _unavailable(f"GPU {index}: energy counter unavailable", index, err) from (
                    err.__cause__ or err
                )
        self.device_indices: tuple[int, ...] = tuple(indices)
        self.uuids: tuple[str, ...] = tuple(uuids)
        self.source = "nvml:" + ",".join(uuids)

    def _read_counters(self) -> tuple[int, ...]:
        """One counter read per device, in millijoules; failures become GpuUnavailableError."""
        if self._closed:
            raise RuntimeError("NvmlEnergyMeter is closed")
        values: list[int] = []
        for index in self.device_indices:
            try:
                values.append(round(self._gpu.energy_j(index) * 1000.0))
            except GpuError as err:
                raise _unavailable(f"GPU {index}: energy counter read failed", index, err) from (
                    err.__cause__ or err
                )
        return tuple(values)

    def begin(self) -> object:
        """Snapshot the counters and clocks."""
        counters = self._read_counters()
        return _Window(
            owner=id(self),
            wall_start=time.perf_counter(),
            cpu_start=time.process_time(),
            counters_mj=counters,
        )

    def end(self, token: object) -> EnergyReading:
        """Sum counter deltas since begin(); raise EnergyCounterResetError if one went back."""
        window = _check_token(self, token)
        counters = self._read_counters()
        seconds = max(0.0, time.perf_counter() - window.wall_start)
        cpu_seconds = max(0.0, time.process_time() - window.cpu_start)
        total_mj = 0
        for index, before, after in zip(
            self.device_indices, window.counters_mj, counters, strict=True
        ):
            if after < before:
                raise EnergyCounterResetError(
                    f"GPU {index}: energy counter went backwards ({before} -> {after} mJ); "
                    "driver reload or GPU reset during the window, its energy is unknown"
                )
            total_mj += after - before
        return EnergyReading(
            joules=total_mj / 1000.0,
            seconds=seconds,
            method=self.method,
            source=self.source,
            cpu_seconds=cpu_seconds,
        )

    def close(self) -> None:
        """Shut NVML down exactly once; later calls do nothing."""
        self._closed = True
        self._gpu.close()

    def __enter__(self) -> NvmlEnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unavailable(what: str, index: int, err: GpuError) -> GpuUnavailableError:
    vendor = err.__cause__ or err
    return GpuUnavailableError(f"{what}: {err}", f"GPU {index} {type(vendor).__name__}")


def probe_energy_meter(
    prefer_gpu: bool = True,
    watts_per_core: float = 15.0,
    device_indices: Sequence[int] | None = None,
    nvml: Any | None = None,
) -> tuple[EnergyMeter, str]:
    """Pick the best meter this machine supports and say why, in one line.

    Bad ``watts_per_core`` raises ValueError before anything else: a misconfigured
    fallback should fail loudly, not when the GPU happens to be missing.
    """
    host_w, _ = _validated_watts(watts_per_core, 0.0)
    fallback = f"using host CPU estimate at {host_w} W/core"
    if not prefer_gpu:
        return HostCpuEnergyMeter(host_w), f"GPU not preferred: {fallback}"
    try:
        meter = NvmlEnergyMeter(device_indices=device_indices, nvml=nvml)
    except GpuUnavailableError as err:
        return HostCpuEnergyMeter(host_w), f"NVML unavailable ({err.reason}): {fallback}"
    n = len(meter.device_indices)
    return meter, f"NVML energy counter on {n} GPU(s) ({meter.source}): measured"
