"""Replay of recorded GPU telemetry: the *observe* side, read-only, labelled ``"replayed"``.

Where it sits in the loop: a :class:`ReplayGpu` stands in for :class:`~adapters.gpu.nvml.
NvmlGpu` wherever the daemon only reads (watch-tick telemetry, dashboards, tests of the
energy agent), and plays back a trace measured on a real GPU row by row. It deliberately
has no setters, so nothing can pretend to steer a recording.

The format is the one of ``data/h200_trace.csv`` (recorded with nvidia-ml-py on an NVIDIA
H200 at about 18 Hz): one row per sample with the columns in :data:`TRACE_COLUMNS`;
powers in milliwatts, the cumulative energy counter in millijoules, clocks in MHz, ``t`` in
Unix seconds, ``clock_reasons`` as NVML's bitmask and ``phase`` naming the work running.
A malformed file fails at load with the file name and line, never halfway through a replay.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from adapters.gpu.base import GpuError, GpuInfo, GpuSample, bundled_data_path

__all__ = ["TRACE_COLUMNS", "ReplayGpu", "TraceFormatError", "TraceRow", "read_trace"]

TRACE_COLUMNS: tuple[str, ...] = (
    "clock_reasons",
    "energy_mj",
    "mem_mhz",
    "mem_used",
    "phase",
    "power_average_mw",
    "power_instant_mw",
    "power_mw",
    "sm_mhz",
    "t",
    "temp_c",
    "util_gpu",
    "util_mem",
)
_INT_COLUMNS = frozenset({"clock_reasons", "energy_mj", "mem_used"})


class TraceFormatError(ValueError):
    """A telemetry file that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True)
class TraceRow:
    """One recorded sample, converted to the seam's units."""

    line: int  # 1-based line in the file, for messages
    at_unix: float
    phase: str
    power_w: float
    power_average_w: float
    power_instant_w: float
    energy_counter_j: float  # the device's absolute counter, as recorded
    util_gpu_pct: float
    util_mem_pct: float
    sm_clock_mhz: float
    mem_clock_mhz: float
    mem_used_bytes: int
    temp_c: float
    clock_reasons: int


def _number(path: Path, line: int, column: str, text: str | None) -> float:
    """Parse one cell; the error says exactly where, because traces are edited by hand."""
    if text is None or text.strip() == "":
        raise TraceFormatError(f"{path.name} line {line}: column {column!r} is empty")
    try:
        value = float(int(text)) if column in _INT_COLUMNS else float(text)
    except ValueError:
        kind = "an integer" if column in _INT_COLUMNS else "a number"
        raise TraceFormatError(
            f"{path.name} line {line}: column {column!r} value {text!r} is not {kind}"
        ) from None
    if not math.isfinite(value) or (value < 0 and column != "t"):
        raise TraceFormatError(
            f"{path.name} line {line}: column {column!r} value {text!r} is out of range"
        )
    return value


def read_trace(path: str | Path) -> tuple[TraceRow, ...]:
    """Load and validate a whole trace: columns, numbers, and a counter that never goes back."""
    path = Path(path)
    rows: list[TraceRow] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceFormatError(f"{path.name} line 1: missing column(s) {', '.join(missing)}")
        for raw in reader:
            line = reader.line_num
            if None in raw:  # more cells than the header names
                raise TraceFormatError(f"{path.name} line {line}: too many cells")
            v = {c: _number(path, line, c, raw[c]) for c in TRACE_COLUMNS if c != "phase"}
            row = TraceRow(
                line=line,
                at_unix=v["t"],
                phase=(raw["phase"] or "").strip(),
                power_w=v["power_mw"] / 1000.0,
                power_average_w=v["power_average_mw"] / 1000.0,
                power_instant_w=v["power_instant_mw"] / 1000.0,
                energy_counter_j=v["energy_mj"] / 1000.0,
                util_gpu_pct=v["util_gpu"],
                util_mem_pct=v["util_mem"],
                sm_clock_mhz=v["sm_mhz"],
                mem_clock_mhz=v["mem_mhz"],
                mem_used_bytes=int(v["mem_used"]),
                temp_c=v["temp_c"],
                clock_reasons=int(v["clock_reasons"]),
            )
            if rows and row.energy_counter_j < rows[-1].energy_counter_j:
                raise TraceFormatError(
                    f"{path.name} line {line}: energy counter went backwards "
                    f"({rows[-1].energy_counter_j} J -> {row.energy_counter_j} J)"
                )
            rows.append(row)
    if not rows:
        raise TraceFormatError(f"{path.name}: no samples after the header")
    return tuple(rows)


def _device_from_probe(path: Path) -> GpuInfo:
    """The recorded device's static facts, from the probe JSON's ``static`` block."""
    try:
        static: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["static"]
        lo_mw, hi_mw = static["power_limit_constraints_mw"]
        return GpuInfo(
            index=0,
            name=str(static["name"]),
            uuid=str(static["uuid"]),
            memory_total_bytes=int(static["memory_total_bytes"]),
            power_limit_min_w=lo_mw / 1000.0,
            power_limit_max_w=hi_mw / 1000.0,
            power_limit_default_w=static["power_limit_default_mw"] / 1000.0,
            source="replay",
        )
    except (KeyError, TypeError, ValueError) as err:
        raise TraceFormatError(f"{path.name}: no usable 'static' block: {err!r}") from err


class ReplayGpu:
    """One recorded device: each :meth:`sample` returns the next row (method ``"replayed"``).

    With ``loop=True`` the trace starts again after its last row, and time and the energy
    counter carry on from where the lap ended (so neither ever goes back); with
    ``loop=False`` sampling past the end raises :class:`GpuError`.
    """

    source = "replay"

    def __init__(
        self,
        path: str | Path | None = None,
        loop: bool = True,
        *,
        probe_path: str | Path | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else bundled_data_path("h200_trace.csv")
        self.loop = loop
        self.rows = read_trace(self.path)
        probe = Path(probe_path) if probe_path is not None else bundled_data_path("h200_probe.json")
        self._info = _device_from_probe(probe)
        first, last = self.rows[0], self.rows[-1]
        gaps = sorted(b.at_unix - a.at_unix for a, b in pairwise(self.rows))
        step_s = gaps[len(gaps) // 2] if gaps else 0.0
        # One lap = the recording plus one typical sample interval at the last row's power.
        self._lap_s = last.at_unix - first.at_unix + step_s
        self._lap_j = last.energy_counter_j - first.energy_counter_j + last.power_w * step_s
        self._pos = -1  # row last returned by sample(); -1 before the first
        self._laps = 0

    @property
    def phases(self) -> tuple[str, ...]:
        """The trace's phases in the order they first appear."""
        return tuple(dict.fromkeys(r.phase for r in self.rows))

    @property
    def current(self) -> TraceRow | None:
        """The row the last sample came from (None before the first sample)."""
        return self.rows[self._pos] if self._pos >= 0 else None

    def devices(self) -> list[GpuInfo]:
        """The recorded device, from the probe file that came with the trace."""
        return [self._info]

    def sample(self) -> list[GpuSample]:
        """Advance one row and return it as a sample of device 0."""
        if self._pos + 1 >= len(self.rows):
            if not self.loop:
                raise GpuError(f"replay of {self.path.name} ended after {len(self.rows)} rows")
            self._laps += 1
            self._pos = -1
        self._pos += 1
        row = self.rows[self._pos]
        return [
            GpuSample(
                index=0,
                at_unix=row.at_unix + self._laps * self._lap_s,
                power_w=row.power_w,
                util_gpu_pct=row.util_gpu_pct,
                util_mem_pct=row.util_mem_pct,
                sm_clock_mhz=row.sm_clock_mhz,
                mem_clock_mhz=row.mem_clock_mhz,
                temp_c=row.temp_c,
                throttle_reasons=row.clock_reasons,
                method="replayed",
            )
        ]

    def energy_j(self, index: int) -> float:
        """The current row's counter, relative to the trace's first row (0.0 before any)."""
        if index != 0:
            raise GpuError(f"no GPU {index} in replay of {self.path.name} (1 device)")
        if self._pos < 0:
            return self._laps * self._lap_j
        row = self.rows[self._pos]
        return self._laps * self._lap_j + row.energy_counter_j - self.rows[0].energy_counter_j
