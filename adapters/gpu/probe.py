"""Pick the GPU telemetry source this machine supports, and say why in one line.

Where it sits in the loop: the first *observe* step at daemon start. Zeus-style, it probes
before it trusts: NVML is used only if it initialises and sees at least one device;
otherwise the caller gets ``None`` and a reason it can print and audit, and carries on
with host estimates. Simulated and replayed sources are only ever chosen explicitly, and
their reasons say so, so no simulated figure can pass for a measurement.
"""

from __future__ import annotations

from typing import Any, Literal

from adapters.gpu.base import GpuProbe, GpuUnavailableError
from adapters.gpu.nvml import NvmlGpu
from adapters.gpu.replay import ReplayGpu
from adapters.gpu.simulated import SimulatedGpu

__all__ = ["Prefer", "probe_gpus"]

Prefer = Literal["auto", "nvml", "simulated", "replay", "none"]


def probe_gpus(
    prefer: Prefer = "auto", *, count: int = 1, nvml: Any | None = None
) -> tuple[GpuProbe | None, str]:
    """Return ``(probe, reason)``; ``probe`` is None when no GPU source is to be used.

    ``"auto"`` and ``"nvml"`` both degrade to ``(None, reason)`` rather than raise: a
    controller without a GPU still runs on host estimates. ``count`` applies to
    ``"simulated"`` only; ``nvml`` injects a (fake) pynvml module.
    """
    if prefer == "none":
        return None, "GPU telemetry off (prefer=none)"
    if prefer == "simulated":
        sim = SimulatedGpu(count=count)
        name = sim.calibration.name
        return sim, f"simulated: {count} x {name} calibrated on measured H200 data (not measured)"
    if prefer == "replay":
        replay = ReplayGpu()
        return replay, (
            f"replayed: {replay.devices()[0].name} trace {replay.path.name} "
            f"({len(replay.rows)} rows, looping; not live)"
        )
    if prefer not in ("auto", "nvml"):
        raise ValueError(f"prefer must be auto, nvml, simulated, replay or none, not {prefer!r}")
    try:
        gpu = NvmlGpu(nvml=nvml)
    except GpuUnavailableError as err:
        return None, f"no NVIDIA GPU ({err.reason})"
    infos = gpu.devices()
    if not infos:
        gpu.close()
        return None, "no NVIDIA GPU (NVML sees 0 devices)"
    names = ", ".join(sorted({i.name for i in infos}))
    return gpu, f"NVML: {len(infos)} GPU(s) ({names}): measured"
