"""Telemetry sampled on every watch tick (observe side): cheap readings, never privileged.

On this seam the daemon reads how busy the machine is between and during cycles. Host
power has no meter here, so it is *estimated* from CPU use and labelled so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TelemetrySample:
    at_unix: float
    load_1m: float
    cpu_count: int
    daemon_cpu_pct: float  # this process, percent of one core, since the previous sample
    host_power_w: float  # estimated: load x watts per core
    method: str = "estimated"

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "at_unix": round(self.at_unix, 3),
            "load_1m": round(self.load_1m, 2),
            "cpu_count": self.cpu_count,
            "daemon_cpu_pct": round(self.daemon_cpu_pct, 1),
            "host_power_w": round(self.host_power_w, 1),
            "method": self.method,
        }


class HostTelemetry:
    """Load average and the daemon's own CPU use; host power estimated from the load."""

    def __init__(self, watts_per_core: float) -> None:
        self.watts_per_core = watts_per_core
        self._last = (time.monotonic(), time.process_time())

    def sample(self) -> TelemetrySample:
        now, cpu = time.monotonic(), time.process_time()
        wall = max(now - self._last[0], 1e-9)
        pct = 100.0 * (cpu - self._last[1]) / wall
        self._last = (now, cpu)
        cores = os.cpu_count() or 1
        load = os.getloadavg()[0]
        return TelemetrySample(
            at_unix=time.time(),
            load_1m=load,
            cpu_count=cores,
            daemon_cpu_pct=pct,
            host_power_w=min(load, cores) * self.watts_per_core,
        )
