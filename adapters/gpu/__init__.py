"""GPU adapters behind one small seam: read (probe, sample, energy) apart from write (control).

Where they sit in the loop: *observe* through :class:`GpuProbe` (``NvmlGpu`` measured,
``SimulatedGpu`` simulated, ``ReplayGpu`` replayed) chosen by :func:`probe_gpus`; *act*
through :class:`GpuControl`, only ever via :class:`GpuSettingsGuard`, which journals the
original value first so it is always restored. Importing this package needs no GPU.
"""

from adapters.gpu.base import (
    KNOB_POWER_LIMIT_W,
    ControlResult,
    GpuControl,
    GpuError,
    GpuInfo,
    GpuNotSupportedError,
    GpuProbe,
    GpuSample,
    GpuUnavailableError,
)
from adapters.gpu.guard import (
    GpuSettingsGuard,
    MemorySettingsJournal,
    SettingsEntry,
    SettingsJournal,
)
from adapters.gpu.nvml import NvmlGpu
from adapters.gpu.probe import probe_gpus
from adapters.gpu.replay import ReplayGpu, TraceFormatError
from adapters.gpu.simulated import (
    H200Calibration,
    SimulatedGpu,
    SimulatedTraining,
    default_calibration,
    estimate_training,
)

__all__ = [
    "KNOB_POWER_LIMIT_W",
    "ControlResult",
    "GpuControl",
    "GpuError",
    "GpuInfo",
    "GpuNotSupportedError",
    "GpuProbe",
    "GpuSample",
    "GpuSettingsGuard",
    "GpuUnavailableError",
    "H200Calibration",
    "MemorySettingsJournal",
    "NvmlGpu",
    "ReplayGpu",
    "SettingsEntry",
    "SettingsJournal",
    "SimulatedGpu",
    "SimulatedTraining",
    "TraceFormatError",
    "default_calibration",
    "estimate_training",
    "probe_gpus",
]
