"""NVIDIA GPUs through NVML (nvidia-ml-py): the measured implementation of the GPU seam.

Where it sits in the loop: *observe* (:meth:`NvmlGpu.devices`, :meth:`NvmlGpu.sample`,
:meth:`NvmlGpu.energy_j`) and *act* (:meth:`NvmlGpu.set_power_limit_w`). The daemon reaches
it through :func:`adapters.gpu.probe.probe_gpus`, and writes only through
:class:`adapters.gpu.guard.GpuSettingsGuard`, which journals the original value first.

Vendor errors are translated here and nowhere else. They are matched through the module's
own attributes (``nvml.NVMLError``, ``nvml.NVMLError_NoPermission``, ...) rather than
imported classes, so a fake module in the tests exercises exactly the same paths:

* ``NVMLError_NoPermission`` on a write -> ``ControlResult(status="not_permitted")``
* ``NVMLError_NotSupported`` -> ``"unsupported"`` on a write, NaN for a sample field,
  :class:`GpuNotSupportedError` for a single read
* anything else -> :class:`GpuError` raised from the original.

``pynvml`` is imported lazily so this module loads on machines with no NVIDIA stack at all.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Callable
from typing import Any

from adapters.gpu.base import (
    KNOB_POWER_LIMIT_W,
    ControlResult,
    ControlStatus,
    GpuError,
    GpuInfo,
    GpuNotSupportedError,
    GpuSample,
    GpuUnavailableError,
)

__all__ = ["NvmlGpu"]

_NAN = float("nan")


class _NoSuchError(Exception):
    """Stands in for an NVML error class the module lacks, so isinstance() is simply False."""


def _as_text(value: object) -> str:
    """pynvml returns bytes in old releases and str in new ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _mw(watts: float) -> int:
    """NVML's power unit is the milliwatt; compare and write in it to avoid float noise."""
    return round(watts * 1000.0)


class NvmlGpu:
    """Every visible NVIDIA GPU, read and (power limit only) written through NVML.

    The constructor initialises NVML once and resolves device handles; :meth:`close` shuts
    NVML down once. Static facts (:meth:`devices`) are read on first use and cached.
    """

    source = "nvml"

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml if nvml is not None else self._import_pynvml()
        self._error: type[BaseException] = self._nvml.NVMLError
        self._no_permission: type[BaseException] = getattr(
            self._nvml, "NVMLError_NoPermission", _NoSuchError
        )
        self._not_supported: type[BaseException] = getattr(
            self._nvml, "NVMLError_NotSupported", _NoSuchError
        )
        self._clock_sm = getattr(self._nvml, "NVML_CLOCK_SM", 1)
        self._clock_mem = getattr(self._nvml, "NVML_CLOCK_MEM", 2)
        self._temp_gpu = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        reasons = getattr(self._nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if reasons is None:  # drivers/bindings before the "event reasons" rename
            reasons = getattr(self._nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        self._reasons_call: Callable[[Any], int] | None = reasons
        self._closed = True
        try:
            self._nvml.nvmlInit()
        except self._error as err:
            raise GpuUnavailableError(
                f"NVML could not initialise: {err}", type(err).__name__
            ) from err
        self._closed = False
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
            self._handles: tuple[Any, ...] = tuple(
                self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)
            )
        except self._error as err:
            self.close()
            raise GpuUnavailableError(
                f"NVML could not list devices: {err}", type(err).__name__
            ) from err
        self._devices: tuple[GpuInfo, ...] | None = None

    @staticmethod
    def _import_pynvml() -> Any:
        """Import on demand: a machine without the package still imports this module."""
        try:
            return importlib.import_module("pynvml")
        except ImportError as err:
            raise GpuUnavailableError(
                "pynvml (nvidia-ml-py) is not installed", "pynvml not installed"
            ) from err

    # --- plumbing --------------------------------------------------------------------------

    def _handle(self, index: int) -> Any:
        if self._closed:
            raise GpuError("NvmlGpu is closed")
        if not 0 <= index < len(self._handles):
            raise GpuError(f"no GPU {index} ({len(self._handles)} device(s) visible)")
        return self._handles[index]

    def _fail(self, index: int, what: str, err: BaseException) -> GpuError:
        """The one place a vendor error becomes ours (callers raise it ``from err``)."""
        if isinstance(err, self._not_supported):
            return GpuNotSupportedError(f"GPU {index}: {what} not supported: {err}")
        return GpuError(f"GPU {index}: {what} failed: {type(err).__name__}: {err}")

    def _optional(self, index: int, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """One sample field: None when unsupported (the sample survives), GpuError otherwise."""
        try:
            return call(*args)
        except self._error as err:
            if isinstance(err, self._not_supported):
                return None
            raise self._fail(index, what, err) from err

    # --- observe ---------------------------------------------------------------------------

    @property
    def device_count(self) -> int:
        return len(self._handles)

    def uuid(self, index: int) -> str:
        """One device's UUID, without the rest of its identity (cheap, no power queries)."""
        handle = self._handle(index)
        try:
            return _as_text(self._nvml.nvmlDeviceGetUUID(handle))
        except self._error as err:
            raise self._fail(index, "uuid", err) from err

    def devices(self) -> list[GpuInfo]:
        """Identity, memory and power-limit range of every device (read once, then cached)."""
        if self._devices is None:
            self._devices = tuple(self._read_info(i) for i in range(len(self._handles)))
        return list(self._devices)

    def _read_info(self, index: int) -> GpuInfo:
        nvml, handle = self._nvml, self._handle(index)
        try:
            name = _as_text(nvml.nvmlDeviceGetName(handle))
            uuid = _as_text(nvml.nvmlDeviceGetUUID(handle))
        except self._error as err:
            raise self._fail(index, "identity", err) from err
        memory = self._optional(index, "memory info", nvml.nvmlDeviceGetMemoryInfo, handle)
        limits = self._optional(
            index, "power limits", nvml.nvmlDeviceGetPowerManagementLimitConstraints, handle
        )
        default_mw = self._optional(
            index, "default power limit", nvml.nvmlDeviceGetPowerManagementDefaultLimit, handle
        )
        get_capability = getattr(nvml, "nvmlDeviceGetCudaComputeCapability", None)
        capability = (
            self._optional(index, "compute capability", get_capability, handle)
            if get_capability is not None
            else None
        )
        lo_w, hi_w = (limits[0] / 1000.0, limits[1] / 1000.0) if limits else (_NAN, _NAN)
        return GpuInfo(
            index=index,
            name=name,
            uuid=uuid,
            memory_total_bytes=int(memory.total) if memory is not None else 0,
            power_limit_min_w=lo_w,
            power_limit_max_w=hi_w,
            power_limit_default_w=default_mw / 1000.0 if default_mw is not None else _NAN,
            source="nvml",
            compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
        )

    def sample(self) -> list[GpuSample]:
        """One reading per device (about six sub-microsecond NVML calls each, no energy)."""
        at_unix = time.time()
        return [self._sample_one(i, at_unix) for i in range(len(self._handles))]

    def _sample_one(self, index: int, at_unix: float) -> GpuSample:
        nvml, handle, opt = self._nvml, self._handle(index), self._optional
        power_mw = opt(index, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        util = opt(index, "utilisation", nvml.nvmlDeviceGetUtilizationRates, handle)
        sm = opt(index, "SM clock", nvml.nvmlDeviceGetClockInfo, handle, self._clock_sm)
        mem = opt(index, "memory clock", nvml.nvmlDeviceGetClockInfo, handle, self._clock_mem)
        temp = opt(index, "temperature", nvml.nvmlDeviceGetTemperature, handle, self._temp_gpu)
        reasons = (
            opt(index, "clock event reasons", self._reasons_call, handle)
            if self._reasons_call is not None
            else None
        )
        return GpuSample(
            index=index,
            at_unix=at_unix,
            power_w=power_mw / 1000.0 if power_mw is not None else _NAN,
            util_gpu_pct=float(util.gpu) if util is not None else _NAN,
            util_mem_pct=float(util.memory) if util is not None else _NAN,
            sm_clock_mhz=float(sm) if sm is not None else _NAN,
            mem_clock_mhz=float(mem) if mem is not None else _NAN,
            temp_c=float(temp) if temp is not None else _NAN,
            throttle_reasons=int(reasons) if reasons is not None else 0,
            method="measured",
        )

    def energy_j(self, index: int) -> float:
        """Cumulative energy since driver load, in joules (NVML counts millijoules)."""
        handle = self._handle(index)
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)) / 1000.0
        except self._error as err:
            raise self._fail(index, "energy counter", err) from err

    # --- act -------------------------------------------------------------------------------

    def power_limit_w(self, index: int) -> float:
        """The power limit in force now (GpuNotSupportedError where the board has none)."""
        handle = self._handle(index)
        try:
            return int(self._nvml.nvmlDeviceGetPowerManagementLimit(handle)) / 1000.0
        except self._error as err:
            raise self._fail(index, "power limit", err) from err

    def set_power_limit_w(self, index: int, watts: float) -> ControlResult:
        """Range-check, read, and write only when different; refusals come back as a status."""

        def result(status: ControlStatus, previous: float | None, message: str) -> ControlResult:
            return ControlResult(status, index, KNOB_POWER_LIMIT_W, previous, watts, message)

        handle = self._handle(index)
        info = self.devices()[index]
        lo, hi = info.power_limit_min_w, info.power_limit_max_w
        if not math.isfinite(watts) or (
            math.isfinite(lo) and math.isfinite(hi) and not lo <= watts <= hi
        ):
            return result("out_of_range", None, f"{watts} W is outside {lo:g}-{hi:g} W")
        try:
            previous_mw = int(self._nvml.nvmlDeviceGetPowerManagementLimit(handle))
        except self._error as err:
            if isinstance(err, self._not_supported):
                return result("unsupported", None, f"power limit not supported: {err}")
            if isinstance(err, self._no_permission):
                return result("not_permitted", None, f"power limit not readable: {err}")
            raise self._fail(index, "power limit", err) from err
        previous = previous_mw / 1000.0
        if previous_mw == _mw(watts):
            return result("unchanged", previous, f"already {previous:g} W")
        try:
            self._nvml.nvmlDeviceSetPowerManagementLimit(handle, _mw(watts))
        except self._error as err:
            if isinstance(err, self._no_permission):
                return result("not_permitted", previous, f"not permitted (needs root): {err}")
            if isinstance(err, self._not_supported):
                return result("unsupported", previous, f"not supported on this device: {err}")
            raise self._fail(index, "set power limit", err) from err
        return result("applied", previous, f"{previous:g} W -> {watts:g} W")

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Shut NVML down exactly once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        # A failed shutdown leaves nothing to fix; the handles are unusable either way.
        with contextlib.suppress(self._error):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlGpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
