"""Simulated GPUs calibrated on a measured NVIDIA H200: observe *and* act, labelled ``"simulated"``.

Where it sits in the loop: :class:`SimulatedGpu` implements both sides of the GPU seam
(:class:`~adapters.gpu.base.GpuProbe` and :class:`~adapters.gpu.base.GpuControl`) so the
controller's energy decisions, the settings guard and the telemetry tick can be exercised
and benchmarked on machines with no GPU. Nothing it yields is a measurement: device infos
say ``source="simulated"``, samples and workload estimates say ``method="simulated"``.

Calibration (:class:`H200Calibration`) comes from the files in ``adapters/gpu/data``,
measured with nvidia-ml-py on one H200 (driver 580, default 700 W limit):

* device facts from ``h200_probe.json``: power-limit range 200-700 W (default 700 W),
  SM clocks 345-1980 MHz, memory clock 3201 MHz, and the idle draw (~80 W, read from the
  energy counter over an idle window);
* the SM clock under the power cap (~1590 MHz) and the idle / capped temperatures from
  ``h200_trace.csv`` (median of the ``sw_power_cap`` rows of the heaviest training phase);
* training throughput and average power from ``h200_sweep.json``: 48 runs of a GPT-style
  LM, 0.5M-85.6M parameters x batch 8-512 x fp32/tf32/bf16, all at the 700 W default.

The workload model (:func:`estimate_training`) interpolates the sweep bilinearly in
(log parameters, log batch): log tokens/s and watts; outside the measured range it clamps
to the nearest edge rather than extrapolate. Under a power limit ``L`` below the draw ``D``
the configuration had at 700 W (``D`` itself at most 700 W), the law is, with idle draw
``I`` and ``a = cap_exponent = 0.75``::

    tokens_per_s(L) = tokens_per_s(700 W) * ((L - I) / (D - I)) ** a,   avg_power_w = L

Only the power above idle buys speed; ``a < 1`` because dynamic power grows faster than
clock speed (P ~ f V^2), so capping costs less speed than power -- the effect Zeus-style
power-limit tuning exploits. ``a`` was *not* measured here (the H200 was not swept over
power limits); it is an assumption in the 0.7-1 range reported for datacentre GPUs and is
a calibration field so it can be refitted. Utilisation and temperature follow linear fits
to the trace (utilisation saturates ~465 W above idle; memory utilisation ~0.45x GPU).
"""

from __future__ import annotations

import functools
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from adapters.gpu.base import (
    KNOB_POWER_LIMIT_W,
    ControlResult,
    ControlStatus,
    GpuError,
    GpuInfo,
    GpuNotSupportedError,
    GpuSample,
    bundled_data_path,
)
from adapters.gpu.replay import read_trace

__all__ = [
    "PRECISIONS",
    "H200Calibration",
    "SimulatedGpu",
    "SimulatedTraining",
    "SweepPoint",
    "default_calibration",
    "estimate_training",
]

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
_GPU_IDLE = 0x001
_SW_POWER_CAP = 0x004
_NAN = float("nan")
# Fractions of the default limit between which a measured draw counts as "at the cap":
# below the first the SM clock is at its maximum, above the second at the capped clock.
_CAP_START, _CAP_FULL = 0.85, 0.95


@dataclass(frozen=True)
class SweepPoint:
    """One measured training run from ``h200_sweep.json`` (at the 700 W default limit)."""

    params: int
    batch_size: int
    precision: str
    tokens_per_s: float
    avg_power_w: float

    @property
    def tokens_per_j(self) -> float:
        return self.tokens_per_s / self.avg_power_w


@dataclass(frozen=True)
class SimulatedTraining:
    """A training workload as the simulator sees it: speed, draw and efficiency, all simulated.

    Only the first three fields are needed to build one by hand (``set_load`` then treats
    ``avg_power_w`` as its draw without a cap); :func:`estimate_training` fills the rest.
    """

    tokens_per_s: float
    avg_power_w: float
    tokens_per_j: float
    method: str = "simulated"
    params: int = 0
    batch_size: int = 0
    precision: str = ""
    power_limit_w: float = _NAN  # the limit this estimate is for
    uncapped_power_w: float = _NAN  # the draw at the 700 W reference limit
    power_capped: bool = False
    sm_clock_mhz: float = _NAN
    util_gpu_pct: float = _NAN
    util_mem_pct: float = _NAN


@dataclass(frozen=True)
class _Grid:
    """One precision's sweep as a full (params x batch) table, for bilinear interpolation."""

    log_params: tuple[float, ...]
    log_batches: tuple[float, ...]
    log_tps: tuple[tuple[float, ...], ...]
    watts: tuple[tuple[float, ...], ...]

    def at(self, params: float, batch_size: float) -> tuple[float, float]:
        """(tokens/s, watts) at the 700 W reference limit, clamped to the measured range."""
        i0, i1, u = _bracket(self.log_params, math.log(params))
        j0, j1, v = _bracket(self.log_batches, math.log(batch_size))

        def mix(t: tuple[tuple[float, ...], ...]) -> float:
            return (
                (1 - u) * (1 - v) * t[i0][j0]
                + (1 - u) * v * t[i0][j1]
                + u * (1 - v) * t[i1][j0]
                + u * v * t[i1][j1]
            )

        return math.exp(mix(self.log_tps)), mix(self.watts)


def _bracket(xs: tuple[float, ...], x: float) -> tuple[int, int, float]:
    """Neighbouring indices and the fraction between them; clamps outside the range."""
    if x <= xs[0]:
        return 0, 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 1, len(xs) - 1, 0.0
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            return i, i + 1, (x - xs[i]) / (xs[i + 1] - xs[i])
    raise AssertionError("unreachable: xs must be sorted")


@dataclass(frozen=True)
class H200Calibration:
    """Measured H200 facts plus the few modelling constants the simulator adds on top."""

    name: str
    memory_total_bytes: int
    idle_w: float
    power_limit_min_w: float
    power_limit_max_w: float
    power_limit_default_w: float
    sm_clock_min_mhz: float
    sm_clock_max_mhz: float
    sm_clock_at_cap_mhz: float
    mem_clock_mhz: float
    temp_idle_c: float
    temp_at_cap_c: float
    sweep: tuple[SweepPoint, ...]
    cap_exponent: float = 0.75  # assumed, see the module docstring
    util_full_above_idle_w: float = 465.0  # fit to the trace: draw above idle at 100 % util
    util_mem_ratio: float = 0.45  # fit to the trace: memory util / GPU util when busy

    @classmethod
    def from_files(
        cls,
        probe_path: str | Path | None = None,
        sweep_path: str | Path | None = None,
        trace_path: str | Path | None = None,
    ) -> H200Calibration:
        """Build from the bundled measurement files (or others in the same format)."""
        probe_file = Path(probe_path or bundled_data_path("h200_probe.json"))
        sweep_file = Path(sweep_path or bundled_data_path("h200_sweep.json"))
        probe: dict[str, Any] = json.loads(probe_file.read_text(encoding="utf-8"))
        static = probe["static"]
        sweep = tuple(
            SweepPoint(
                params=int(r["params"]),
                batch_size=int(r["batch"]),
                precision=str(r["prec"]),
                tokens_per_s=float(r["tokens_per_s"]),
                avg_power_w=float(r["avg_watts"]),
            )
            for r in json.loads(sweep_file.read_text(encoding="utf-8"))["sweep"]
        )
        rows = read_trace(trace_path or bundled_data_path("h200_trace.csv"))
        training = [r for r in rows if r.phase.startswith("train")]
        heaviest = max(
            {r.phase for r in training},
            key=lambda p: median(r.power_w for r in training if r.phase == p),
        )
        capped = [r for r in training if r.phase == heaviest and r.clock_reasons & _SW_POWER_CAP]
        idle = [r for r in rows if r.phase == "idle"]
        if not capped or not idle:
            raise ValueError("trace needs an 'idle' phase and a power-capped training phase")
        lo_mw, hi_mw = static["power_limit_constraints_mw"]
        clock_lo, clock_hi = static["supported_gfx_clocks_minmax"]
        return cls(
            name=str(static["name"]),
            memory_total_bytes=int(static["memory_total_bytes"]),
            idle_w=float(probe["idle"]["watts_from_counter"]),
            power_limit_min_w=lo_mw / 1000.0,
            power_limit_max_w=hi_mw / 1000.0,
            power_limit_default_w=static["power_limit_default_mw"] / 1000.0,
            sm_clock_min_mhz=float(clock_lo),
            sm_clock_max_mhz=float(clock_hi),
            sm_clock_at_cap_mhz=median(r.sm_clock_mhz for r in capped),
            mem_clock_mhz=float(static["max_mem_clock_mhz"]),
            temp_idle_c=median(r.temp_c for r in idle),
            temp_at_cap_c=median(r.temp_c for r in capped),
            sweep=sweep,
        )

    @functools.cached_property
    def _grids(self) -> dict[str, _Grid]:
        """The sweep per precision as full tables; a gap in the grid is a calibration error."""
        grids: dict[str, _Grid] = {}
        for prec in sorted({p.precision for p in self.sweep}):
            points = {(p.params, p.batch_size): p for p in self.sweep if p.precision == prec}
            params = sorted({k[0] for k in points})
            batches = sorted({k[1] for k in points})
            missing = [(p, b) for p in params for b in batches if (p, b) not in points]
            if missing:
                raise ValueError(f"sweep for {prec} is not a full grid, missing {missing}")
            grids[prec] = _Grid(
                log_params=tuple(math.log(p) for p in params),
                log_batches=tuple(math.log(b) for b in batches),
                log_tps=tuple(
                    tuple(math.log(points[p, b].tokens_per_s) for b in batches) for p in params
                ),
                watts=tuple(tuple(points[p, b].avg_power_w for b in batches) for p in params),
            )
        return grids

    def check_power_limit_w(self, watts: float) -> None:
        """ValueError unless ``watts`` is a limit the real board would accept."""
        lo, hi = self.power_limit_min_w, self.power_limit_max_w
        if not (math.isfinite(watts) and lo <= watts <= hi):
            raise ValueError(f"power limit {watts} W is outside {lo:g}-{hi:g} W")

    def under_limit(
        self, tokens_per_s: float, draw_w: float, power_limit_w: float, **config: Any
    ) -> SimulatedTraining:
        """Apply the power-cap law to a workload that runs at ``draw_w`` under 700 W."""
        idle, ref = self.idle_w, self.power_limit_default_w
        ref_draw = min(draw_w, ref)  # the sweep was measured under the default cap
        capped_now = power_limit_w < ref_draw
        if capped_now:
            factor = ((power_limit_w - idle) / (ref_draw - idle)) ** self.cap_exponent
            power_w = power_limit_w
        else:
            factor, power_w = 1.0, draw_w
        # SM clock as measured at 700 W: full speed well below the cap, ~1590 MHz at it.
        share = min(1.0, max(0.0, (draw_w / ref - _CAP_START) / (_CAP_FULL - _CAP_START)))
        clock_ref = self.sm_clock_max_mhz - share * (
            self.sm_clock_max_mhz - self.sm_clock_at_cap_mhz
        )
        util = min(100.0, max(0.0, 100.0 * (draw_w - idle) / self.util_full_above_idle_w))
        tps = tokens_per_s * factor
        return SimulatedTraining(
            tokens_per_s=tps,
            avg_power_w=power_w,
            tokens_per_j=tps / power_w,
            power_limit_w=power_limit_w,
            uncapped_power_w=draw_w,
            power_capped=capped_now or draw_w >= _CAP_FULL * ref,
            sm_clock_mhz=max(self.sm_clock_min_mhz, clock_ref * factor),
            util_gpu_pct=util,
            util_mem_pct=util * self.util_mem_ratio,
            **config,
        )

    def estimate(
        self, params: int, batch_size: int, precision: str, power_limit_w: float | None = None
    ) -> SimulatedTraining:
        """Tokens/s and watts of a training configuration under a power limit (simulated)."""
        if params < 1 or batch_size < 1:
            raise ValueError(f"params and batch_size must be >= 1, got {params}, {batch_size}")
        grid = self._grids.get(precision)
        if grid is None:
            raise ValueError(f"precision {precision!r} not in the sweep {sorted(self._grids)}")
        limit = self.power_limit_default_w if power_limit_w is None else float(power_limit_w)
        self.check_power_limit_w(limit)
        tps, draw = grid.at(params, batch_size)
        return self.under_limit(
            tps, draw, limit, params=params, batch_size=batch_size, precision=precision
        )

    def temp_c(self, power_w: float) -> float:
        """Steady-state temperature, linear between the idle and capped medians of the trace."""
        span = self.power_limit_default_w - self.idle_w
        return self.temp_idle_c + (self.temp_at_cap_c - self.temp_idle_c) * max(
            0.0, (power_w - self.idle_w) / span
        )


@functools.cache
def default_calibration() -> H200Calibration:
    """The bundled H200 calibration, loaded once per process."""
    return H200Calibration.from_files()


def estimate_training(
    params: int,
    batch_size: int,
    precision: str,
    power_limit_w: float | None = None,
    *,
    calibration: H200Calibration | None = None,
) -> SimulatedTraining:
    """Simulated tokens/s, average watts and tokens/J of training on one H200.

    ``power_limit_w`` defaults to the board default (700 W). See the module docstring for
    the interpolation and the power-cap law.
    """
    cal = calibration or default_calibration()
    return cal.estimate(params, batch_size, precision, power_limit_w)


class _Device:
    """Mutable per-device state; ``reading`` is swapped whole so sample() needs no lock."""

    __slots__ = ("energy_j", "last_t", "limit_w", "reading", "requested", "running")

    def __init__(self, limit_w: float, at: float) -> None:
        self.limit_w = limit_w
        self.requested: SimulatedTraining | None = None
        self.running: SimulatedTraining | None = None
        self.energy_j = 0.0
        self.last_t = at
        # power_w, util_gpu, util_mem, sm_mhz, mem_mhz, temp_c, throttle bits
        self.reading: tuple[float, float, float, float, float, float, int] = (
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0,
        )


class SimulatedGpu:
    """``count`` simulated H200s with settable workloads and power limits.

    ``now`` is the clock energy is integrated over (and the samples' ``at_unix``); inject a
    fake one for deterministic tests. ``permitted=False`` makes writes come back
    ``not_permitted`` and ``supported=False`` makes them ``unsupported``, as a real board
    would without root or on a MIG slice. Power samples carry seeded noise of
    ``power_noise_pct`` (1 sigma); the energy counter integrates the noiseless draw.
    """

    source = "simulated"

    def __init__(
        self,
        count: int = 1,
        calibration: H200Calibration | None = None,
        seed: int = 0,
        *,
        now: Callable[[], float] = time.time,
        permitted: bool = True,
        supported: bool = True,
        power_noise_pct: float = 0.5,
    ) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.calibration = calibration or default_calibration()
        self.permitted = permitted
        self.supported = supported
        self._now = now
        self._rng = random.Random(seed)
        self._noise = power_noise_pct / 100.0
        self._lock = threading.Lock()
        cal = self.calibration
        self._infos = tuple(
            GpuInfo(
                index=i,
                name=f"{cal.name} (simulated)",
                uuid=f"SIM-GPU-{seed:04x}-{i:06d}",
                memory_total_bytes=cal.memory_total_bytes,
                power_limit_min_w=cal.power_limit_min_w,
                power_limit_max_w=cal.power_limit_max_w,
                power_limit_default_w=cal.power_limit_default_w,
                source="simulated",
                compute_capability=(9, 0),  # the H200 it is calibrated on
            )
            for i in range(count)
        )
        start = now()
        self._devs = [_Device(cal.power_limit_default_w, start) for _ in range(count)]
        for dev in self._devs:
            self._refresh(dev)

    # --- plumbing --------------------------------------------------------------------------

    def _dev(self, index: int) -> _Device:
        if not 0 <= index < len(self._devs):
            raise GpuError(f"no GPU {index} ({len(self._devs)} simulated device(s))")
        return self._devs[index]

    def _advance(self, dev: _Device) -> None:
        """Book the energy drawn since the last change (the draw is constant in between)."""
        t = self._now()
        dev.energy_j += dev.reading[0] * max(0.0, t - dev.last_t)
        dev.last_t = t

    def _refresh(self, dev: _Device) -> None:
        """Recompute the running workload and the reading after a load or limit change."""
        cal = self.calibration
        load = dev.requested
        if load is None:
            dev.running = None
            dev.reading = (
                cal.idle_w,
                0.0,
                0.0,
                cal.sm_clock_min_mhz,
                cal.mem_clock_mhz,
                cal.temp_idle_c,
                _GPU_IDLE,
            )
            return
        if load.params > 0 and load.precision:
            run = cal.estimate(load.params, load.batch_size, load.precision, dev.limit_w)
        else:
            draw = load.uncapped_power_w if math.isfinite(load.uncapped_power_w) else None
            run = cal.under_limit(load.tokens_per_s, draw or load.avg_power_w, dev.limit_w)
        dev.running = run
        dev.reading = (
            run.avg_power_w,
            run.util_gpu_pct,
            run.util_mem_pct,
            run.sm_clock_mhz,
            cal.mem_clock_mhz,
            cal.temp_c(run.avg_power_w),
            _SW_POWER_CAP if run.power_capped else 0,
        )

    # --- observe ---------------------------------------------------------------------------

    def devices(self) -> list[GpuInfo]:
        """The simulated devices (source ``"simulated"``)."""
        return list(self._infos)

    def sample(self) -> list[GpuSample]:
        """One simulated reading per device: the running draw with a little seeded noise."""
        at = self._now()
        gauss, noise = self._rng.gauss, self._noise
        out: list[GpuSample] = []
        for i, dev in enumerate(self._devs):
            p, ug, um, sm, mem, temp, bits = dev.reading
            if noise:
                p *= 1.0 + gauss(0.0, noise)
            out.append(GpuSample(i, at, p, ug, um, sm, mem, temp, bits, "simulated"))
        return out

    def energy_j(self, index: int) -> float:
        """Joules drawn since this simulator started, integrated over ``now()``."""
        dev = self._dev(index)
        with self._lock:
            return dev.energy_j + dev.reading[0] * max(0.0, self._now() - dev.last_t)

    def running(self, index: int) -> SimulatedTraining | None:
        """The workload as it runs under the device's current limit (None when idle)."""
        return self._dev(index).running

    def set_load(self, index: int, training: SimulatedTraining | None) -> None:
        """Start (or with None, stop) a workload; it is re-fitted to the device's limit."""
        dev = self._dev(index)
        with self._lock:
            self._advance(dev)
            dev.requested = training
            self._refresh(dev)

    # --- act -------------------------------------------------------------------------------

    def power_limit_w(self, index: int) -> float:
        """The simulated limit in force (GpuNotSupportedError when ``supported`` is off)."""
        dev = self._dev(index)
        if not self.supported:
            raise GpuNotSupportedError(f"GPU {index}: power limit not supported (simulated)")
        return dev.limit_w

    def set_power_limit_w(self, index: int, watts: float) -> ControlResult:
        """Same order as NVML: range check, read, compare, then permission, then write."""

        def result(status: ControlStatus, previous: float | None, message: str) -> ControlResult:
            return ControlResult(
                status, index, KNOB_POWER_LIMIT_W, previous, watts, f"simulated: {message}"
            )

        dev = self._dev(index)
        cal = self.calibration
        lo, hi = cal.power_limit_min_w, cal.power_limit_max_w
        if not (math.isfinite(watts) and lo <= watts <= hi):
            return result("out_of_range", None, f"{watts} W is outside {lo:g}-{hi:g} W")
        if not self.supported:
            return result("unsupported", None, "power limit not supported")
        with self._lock:
            previous = dev.limit_w
            if round(previous * 1000) == round(watts * 1000):
                return result("unchanged", previous, f"already {previous:g} W")
            if not self.permitted:
                return result("not_permitted", previous, "not permitted")
            self._advance(dev)
            dev.limit_w = float(watts)
            self._refresh(dev)
        return result("applied", previous, f"{previous:g} W -> {watts:g} W")
