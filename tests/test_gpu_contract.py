"""One contract for every GPU probe (adapters/gpu/base.py): NVML over the file-backed fake
NVML module, the simulated H200 and the replayed H200 trace.

What each adapter must do beyond its own tests: plain types in the seam's units, one sample
per device in index order, a cumulative energy counter in joules that never goes back, and
the label of how it was obtained ("measured", "simulated", "replayed") on every figure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fake_nvml_module
import pytest

from adapters.gpu import (
    GpuControl,
    GpuError,
    GpuInfo,
    GpuProbe,
    GpuSample,
    NvmlGpu,
    ReplayGpu,
    SimulatedGpu,
    probe_gpus,
)

#: adapter source -> the method label every sample of it carries
LABELS = {"nvml": "measured", "simulated": "simulated", "replay": "replayed"}
ADVANCE_S = 5.0


@dataclass
class Probed:
    gpu: GpuProbe
    label: str  # the method every sample must carry
    advance: Callable[[], float]  # let device time pass; returns the seconds that passed
    probe: Callable[[], tuple[GpuProbe | None, str]]  # probe_gpus choosing this adapter


def _nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Probed:
    state = tmp_path / "fake_gpu.json"
    monkeypatch.setenv("AIFACTORY_FAKE_NVML_STATE", str(state))
    gpu = NvmlGpu(nvml=fake_nvml_module)

    def advance() -> float:  # the fake board draws its power for ADVANCE_S seconds
        board = json.loads(state.read_text())
        board["energy_mj"] += fake_nvml_module.nvmlDeviceGetPowerUsage(0) * ADVANCE_S
        state.write_text(json.dumps(board))
        return ADVANCE_S

    return Probed(gpu, "measured", advance, lambda: probe_gpus("nvml", nvml=fake_nvml_module))


def _simulated() -> Probed:
    clock = [1_700_000_000.0]
    gpu = SimulatedGpu(count=2, seed=3, now=lambda: clock[0])

    def advance() -> float:
        clock[0] += ADVANCE_S
        return ADVANCE_S

    return Probed(gpu, "simulated", advance, lambda: probe_gpus("simulated", count=2))


def _replay() -> Probed:
    gpu = ReplayGpu()
    last = [gpu.sample()[0].at_unix]  # energy_j reads the row last sampled

    def advance() -> float:  # the recording moves on by 50 rows (about 3 s)
        for _ in range(50):
            (sample,) = gpu.sample()
        elapsed, last[0] = sample.at_unix - last[0], sample.at_unix
        return elapsed

    return Probed(gpu, "replayed", advance, lambda: probe_gpus("replay"))


@pytest.fixture(params=["nvml", "simulated", "replay"])
def probed(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Probed]:
    made = {"nvml": lambda: _nvml(tmp_path, monkeypatch), "simulated": _simulated}
    p = made.get(request.param, _replay)()
    yield p
    close = getattr(p.gpu, "close", None)
    if close is not None:
        close()


def _nan_or(value: float, ok: Callable[[float], bool]) -> bool:
    return isinstance(value, float) and (math.isnan(value) or ok(value))


# --- devices --------------------------------------------------------------------------------


def test_devices_are_plain_facts_in_watts_and_bytes(probed: Probed) -> None:
    gpu = probed.gpu
    assert isinstance(gpu, GpuProbe) and LABELS[gpu.source] == probed.label
    infos = gpu.devices()
    assert infos and all(isinstance(i, GpuInfo) for i in infos)
    assert [i.index for i in infos] == list(range(len(infos)))
    assert len({i.uuid for i in infos}) == len(infos)
    for info in infos:
        assert info.source == gpu.source  # the label on every device
        assert isinstance(info.name, str) and info.name and isinstance(info.uuid, str)
        assert isinstance(info.memory_total_bytes, int) and info.memory_total_bytes > 2**30
        lo, default, hi = info.power_limit_min_w, info.power_limit_default_w, info.power_limit_max_w
        assert all(isinstance(w, float) for w in (lo, default, hi))
        assert math.isnan(lo) or 0 < lo <= default <= hi < 5_000  # watts, not milliwatts
    assert gpu.devices() == infos  # static: read once


# --- samples --------------------------------------------------------------------------------


def _check_sample(s: GpuSample, label: str) -> None:
    assert isinstance(s, GpuSample) and s.method == label
    assert isinstance(s.at_unix, float) and s.at_unix > 1.5e9  # Unix seconds
    assert _nan_or(s.power_w, lambda w: 0 <= w < 5_000)
    assert _nan_or(s.util_gpu_pct, lambda p: 0 <= p <= 100)
    assert _nan_or(s.util_mem_pct, lambda p: 0 <= p <= 100)
    assert _nan_or(s.sm_clock_mhz, lambda f: 0 <= f < 10_000)
    assert _nan_or(s.mem_clock_mhz, lambda f: 0 <= f < 20_000)
    assert _nan_or(s.temp_c, lambda t: -40 < t < 150)
    assert isinstance(s.throttle_reasons, int) and s.throttle_reasons >= 0
    assert isinstance(s.throttle_names, tuple)


def test_sample_is_one_labelled_reading_per_device(probed: Probed) -> None:
    indices = [i.index for i in probed.gpu.devices()]
    times = []
    for _ in range(3):
        samples = probed.gpu.sample()
        assert [s.index for s in samples] == indices
        for s in samples:
            _check_sample(s, probed.label)
        times.append(samples[0].at_unix)
        probed.advance()
    assert times == sorted(times)  # time never goes back


# --- energy ---------------------------------------------------------------------------------


def test_energy_counter_is_joules_and_never_goes_back(probed: Probed) -> None:
    gpu = probed.gpu
    max_w = max(i.power_limit_max_w for i in gpu.devices())
    for info in gpu.devices():
        readings = [gpu.energy_j(info.index)]
        elapsed = []
        for _ in range(2):
            elapsed.append(probed.advance())
            readings.append(gpu.energy_j(info.index))
        assert all(isinstance(j, float) and math.isfinite(j) and j >= 0 for j in readings)
        assert readings == sorted(readings)
        # joules over seconds is a board's power (a counter in mJ would read 1000x that)
        watts = (readings[-1] - readings[0]) / sum(elapsed)
        assert 0 < watts <= 1.1 * max_w, watts


def test_energy_of_an_unknown_device_is_a_gpu_error(probed: Probed) -> None:
    with pytest.raises(GpuError):
        probed.gpu.energy_j(len(probed.gpu.devices()))


# --- labels beyond samples ----------------------------------------------------------------


def test_probing_says_how_the_figures_are_obtained(probed: Probed) -> None:
    gpu, reason = probed.probe()
    assert gpu is not None and gpu.source == probed.gpu.source
    assert probed.label in reason
    close = getattr(gpu, "close", None)
    if close is not None:
        close()


def test_a_control_is_idempotent_and_a_recording_has_none(probed: Probed) -> None:
    gpu = probed.gpu
    if not isinstance(gpu, GpuControl):
        assert probed.label == "replayed"  # a recording cannot be steered
        return
    info = gpu.devices()[0]
    now = gpu.power_limit_w(0)
    assert isinstance(now, float)
    same = gpu.set_power_limit_w(0, now)
    assert (same.status, same.applied, same.previous) == ("unchanged", False, now)
    too_high = gpu.set_power_limit_w(0, info.power_limit_max_w + 50.0)
    assert too_high.status == "out_of_range" and gpu.power_limit_w(0) == now
    lower = info.power_limit_min_w + 100.0
    result = gpu.set_power_limit_w(0, lower)
    assert result.applied and result.previous == now and gpu.power_limit_w(0) == lower
