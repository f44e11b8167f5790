"""The GPU seam: what every GPU adapter reads (probe) and writes (control), in plain units.

Where it sits in the loop: :class:`GpuProbe` is the *observe* side (device facts, fast
telemetry samples, the slow cumulative energy counter) and :class:`GpuControl` is the *act*
side (power limits). They are separate protocols on purpose: most of the daemon only ever
reads, and a read-only adapter (a replayed trace) must not be able to pretend it can write.

Conventions shared by every implementation (NVML, simulated, replay):

* Units are in the names (``_w``, ``_mhz``, ``_pct``, ``_j``, ``_bytes``), never implied.
* Every figure says how it was obtained: :attr:`GpuInfo.source` and :attr:`GpuSample.method`.
* Vendor errors never leave an adapter raw: they become :class:`GpuError` (or a subclass),
  raised ``from`` the vendor error so the original stays in the traceback.
* Refusals to change a setting (no permission, not supported, out of range) are answers,
  not failures: ``set_*`` returns a :class:`ControlResult` and never raises for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "KNOB_POWER_LIMIT_W",
    "THROTTLE_REASON_BITS",
    "ControlResult",
    "ControlStatus",
    "GpuControl",
    "GpuError",
    "GpuInfo",
    "GpuNotSupportedError",
    "GpuProbe",
    "GpuSample",
    "GpuUnavailableError",
    "SampleMethod",
    "Source",
    "bundled_data_path",
    "decode_throttle_reasons",
]

Source = Literal["nvml", "simulated", "replay"]
SampleMethod = Literal["measured", "simulated", "replayed"]
ControlStatus = Literal["applied", "unchanged", "not_permitted", "unsupported", "out_of_range"]

#: The knob name used in control results and in the settings journal.
KNOB_POWER_LIMIT_W = "power_limit_w"

#: NVML's clock-event ("throttle") reason bits, as nvml.h defines them, in bit order.
THROTTLE_REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal"),
    (0x040, "hw_thermal"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks"),
)


def bundled_data_path(name: str) -> Path:
    """A file of measured H200 facts shipped in ``adapters/gpu/data``."""
    return Path(__file__).with_name("data") / name


def decode_throttle_reasons(mask: int) -> tuple[str, ...]:
    """Names of the set bits we know; unknown (newer driver) bits are ignored, not guessed."""
    return tuple(name for bit, name in THROTTLE_REASON_BITS if mask & bit)


@dataclass(frozen=True)
class GpuInfo:
    """Static facts about one device, read once: identity, memory and power-limit range."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    power_limit_min_w: float  # NaN where the board does not report constraints
    power_limit_max_w: float
    power_limit_default_w: float
    source: Source
    compute_capability: tuple[int, int] | None = None  # (8, 0) and later: bf16 and TF32


@dataclass(frozen=True)
class GpuSample:
    """One cheap telemetry reading of one device; a field the device cannot report is NaN."""

    index: int
    at_unix: float
    power_w: float
    util_gpu_pct: float
    util_mem_pct: float
    sm_clock_mhz: float
    mem_clock_mhz: float
    temp_c: float
    throttle_reasons: int  # NVML bitmask; 0 also where the device cannot report it
    method: SampleMethod

    @property
    def throttle_names(self) -> tuple[str, ...]:
        """The bitmask as names (e.g. ``("sw_power_cap",)``), for logs and audit figures."""
        return decode_throttle_reasons(self.throttle_reasons)


@dataclass(frozen=True)
class ControlResult:
    """The outcome of one attempt to change a knob; refusals are results, not exceptions."""

    status: ControlStatus
    index: int
    knob: str
    previous: float | None  # the value before the attempt, where it could be read
    requested: float
    message: str

    @property
    def applied(self) -> bool:
        """True only when the device's setting actually changed."""
        return self.status == "applied"


@runtime_checkable
class GpuProbe(Protocol):
    """Read side of a GPU adapter."""

    source: str

    def devices(self) -> list[GpuInfo]:
        """Static facts of every visible device, by index."""
        ...

    def sample(self) -> list[GpuSample]:
        """One fast reading per device: power, utilisation, clocks, temperature, throttling.

        Deliberately excludes the energy counter, which costs milliseconds per read.
        """
        ...

    def energy_j(self, index: int) -> float:
        """The device's cumulative energy counter in joules; slow, read at window edges only."""
        ...


@runtime_checkable
class GpuControl(Protocol):
    """Write side of a GPU adapter: idempotent setters that report instead of raising."""

    def power_limit_w(self, index: int) -> float:
        """The power limit in force now."""
        ...

    def set_power_limit_w(self, index: int, watts: float) -> ControlResult:
        """Read first and write only when different; refusals come back as a status."""
        ...


class GpuError(Exception):
    """A GPU adapter failed (device lost, driver error); raised ``from`` the vendor error."""


class GpuUnavailableError(GpuError):
    """No usable GPU stack: library missing, driver not loaded, NVML would not initialise.

    ``reason`` is a short tag (usually the vendor error's class name) for one-line messages.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class GpuNotSupportedError(GpuError):
    """The device cannot report this value (MIG slice, consumer board, old driver)."""
