"""NvmlGpu against a fake pynvml (reads, idempotent writes, error translation), probe_gpus,
and one read-only test against the real NVML that skips without an NVIDIA GPU."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.gpu import (
    GpuControl,
    GpuError,
    GpuNotSupportedError,
    GpuProbe,
    GpuSample,
    GpuUnavailableError,
    NvmlGpu,
    ReplayGpu,
    SimulatedGpu,
    probe_gpus,
)

# --- fake pynvml ---------------------------------------------------------------------------


class NVMLError(Exception):
    pass


# Names mirror pynvml's generated NVMLError_* subclasses, which NvmlGpu looks up by name.
class NVMLError_NoPermission(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


@dataclass
class FakeDevice:
    """One board's state in NVML units (mW, mJ, MHz)."""

    uuid: str | bytes = "GPU-fake-0"
    name: str | bytes = "NVIDIA H200"
    memory_total: int = 150_754_820_096
    min_mw: int = 200_000
    max_mw: int = 700_000
    default_mw: int = 700_000
    limit_mw: int = 700_000
    power_mw: int = 691_250
    energy_mj: int = 2_622_422
    util: tuple[int, int] = (100, 51)
    sm_mhz: int = 1590
    mem_mhz: int = 3201
    temp_c: int = 53
    reasons: int = 0x4
    fail: dict[str, BaseException] = field(default_factory=dict)  # call name -> error


class FakeNvml:
    """Just enough of pynvml for NvmlGpu; every call checks ``fail`` for an injected error."""

    NVMLError = NVMLError
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, devices: list[FakeDevice], init_error: BaseException | None = None):
        self.devices = devices
        self.init_error = init_error
        self.init_calls = self.shutdown_calls = 0
        self.set_calls: list[tuple[int, int]] = []

    def _dev(self, handle: int, call: str) -> FakeDevice:
        dev = self.devices[handle]
        if call in dev.fail:
            raise dev.fail[call]
        return dev

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        return self._dev(h, "name").name

    def nvmlDeviceGetUUID(self, h: int) -> str | bytes:
        return self._dev(h, "uuid").uuid

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=self._dev(h, "memory").memory_total, used=0, free=0)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        dev = self._dev(h, "constraints")
        return [dev.min_mw, dev.max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return self._dev(h, "default").default_mw

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return self._dev(h, "limit").limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, h: int, mw: int) -> None:
        dev = self._dev(h, "set_limit")
        self.set_calls.append((h, mw))
        dev.limit_mw = mw

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._dev(h, "power").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self._dev(h, "energy").energy_mj

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        gpu, memory = self._dev(h, "util").util
        return SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        dev = self._dev(h, "clock")
        return dev.sm_mhz if kind == self.NVML_CLOCK_SM else dev.mem_mhz

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._dev(h, "temp").temp_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return self._dev(h, "reasons").reasons


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml([FakeDevice(), FakeDevice(uuid=b"GPU-fake-1", limit_mw=450_000, reasons=0)])


# --- reads ---------------------------------------------------------------------------------


def test_devices_in_watts_and_text(fake: FakeNvml) -> None:
    with NvmlGpu(nvml=fake) as gpu:
        infos = gpu.devices()
        assert gpu.source == "nvml"
        assert [i.uuid for i in infos] == ["GPU-fake-0", "GPU-fake-1"]  # bytes decoded
        h200 = infos[0]
        assert (h200.index, h200.name, h200.source) == (0, "NVIDIA H200", "nvml")
        assert h200.memory_total_bytes == 150_754_820_096
        assert (h200.power_limit_min_w, h200.power_limit_max_w) == (200.0, 700.0)
        assert h200.power_limit_default_w == 700.0
        assert isinstance(gpu, GpuProbe) and isinstance(gpu, GpuControl)
    assert fake.init_calls == 1 and fake.shutdown_calls == 1


def test_sample_reads_every_field_and_decodes_throttling(fake: FakeNvml) -> None:
    fake.devices[1].reasons = 0x1 | 0x40 | 0x100
    with NvmlGpu(nvml=fake) as gpu:
        first, second = gpu.sample()
    assert first == GpuSample(
        0, first.at_unix, 691.25, 100.0, 51.0, 1590.0, 3201.0, 53.0, 4, "measured"
    )
    assert first.throttle_names == ("sw_power_cap",)
    assert second.throttle_names == ("gpu_idle", "hw_thermal", "display_clocks")
    assert abs(first.at_unix - second.at_unix) < 1.0


def test_unsupported_sample_field_is_nan_not_a_failure(fake: FakeNvml) -> None:
    fake.devices[0].fail = {
        "temp": NVMLError_NotSupported(),
        "util": NVMLError_NotSupported(),
        "reasons": NVMLError_NotSupported(),
    }
    with NvmlGpu(nvml=fake) as gpu:
        s = gpu.sample()[0]
    assert math.isnan(s.temp_c) and math.isnan(s.util_gpu_pct) and math.isnan(s.util_mem_pct)
    assert s.power_w == 691.25 and s.sm_clock_mhz == 1590.0  # the rest survived
    assert s.throttle_reasons == 0 and s.throttle_names == ()


def test_other_vendor_errors_become_gpu_error_from_the_original(fake: FakeNvml) -> None:
    lost = NVMLError_GpuIsLost("GPU is lost")
    fake.devices[0].fail = {"power": lost}
    with NvmlGpu(nvml=fake) as gpu, pytest.raises(GpuError, match="GPU 0: power") as info:
        gpu.sample()
    assert info.value.__cause__ is lost


def test_old_bindings_fall_back_to_throttle_reasons(fake: FakeNvml) -> None:
    fake.nvmlDeviceGetCurrentClocksEventReasons = None  # type: ignore[assignment,method-assign]
    fake.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0x20  # type: ignore[attr-defined]
    with NvmlGpu(nvml=fake) as gpu:
        assert gpu.sample()[0].throttle_names == ("sw_thermal",)


def test_energy_counter_in_joules(fake: FakeNvml) -> None:
    with NvmlGpu(nvml=fake) as gpu:
        assert gpu.energy_j(0) == pytest.approx(2622.422)
        fake.devices[0].fail = {"energy": NVMLError_NotSupported()}
        with pytest.raises(GpuNotSupportedError):
            gpu.energy_j(0)
        with pytest.raises(GpuError, match="no GPU 5"):
            gpu.energy_j(5)


# --- writes --------------------------------------------------------------------------------


def test_set_equal_limit_is_unchanged_without_a_write(fake: FakeNvml) -> None:
    with NvmlGpu(nvml=fake) as gpu:
        result = gpu.set_power_limit_w(0, 700.0)
    assert (result.status, result.previous, result.applied) == ("unchanged", 700.0, False)
    assert fake.set_calls == []


def test_set_different_limit_applies_in_milliwatts(fake: FakeNvml) -> None:
    with NvmlGpu(nvml=fake) as gpu:
        result = gpu.set_power_limit_w(1, 512.5)
        assert gpu.power_limit_w(1) == 512.5
    assert result.applied and result.status == "applied"
    assert (result.index, result.knob, result.previous, result.requested) == (
        1,
        "power_limit_w",
        450.0,
        512.5,
    )
    assert fake.set_calls == [(1, 512_500)]


@pytest.mark.parametrize("watts", [199.9, 700.1, float("nan"), float("inf")])
def test_out_of_range_is_refused_before_calling_nvml(fake: FakeNvml, watts: float) -> None:
    with NvmlGpu(nvml=fake) as gpu:
        result = gpu.set_power_limit_w(0, watts)
    assert result.status == "out_of_range" and "200-700 W" in result.message
    assert fake.set_calls == [] and fake.devices[0].limit_mw == 700_000


def test_no_permission_is_a_result_not_an_exception(fake: FakeNvml) -> None:
    fake.devices[0].fail = {"set_limit": NVMLError_NoPermission("Insufficient Permissions")}
    with NvmlGpu(nvml=fake) as gpu:
        result = gpu.set_power_limit_w(0, 400.0)
    assert (result.status, result.previous) == ("not_permitted", 700.0)
    assert fake.devices[0].limit_mw == 700_000


def test_not_supported_is_a_result_on_write_and_on_read(fake: FakeNvml) -> None:
    fake.devices[0].fail = {"set_limit": NVMLError_NotSupported()}  # e.g. a MIG slice
    fake.devices[1].fail = {"limit": NVMLError_NotSupported()}  # e.g. a consumer board
    with NvmlGpu(nvml=fake) as gpu:
        assert gpu.set_power_limit_w(0, 400.0).status == "unsupported"
        assert gpu.set_power_limit_w(1, 400.0).status == "unsupported"
        with pytest.raises(GpuNotSupportedError):
            gpu.power_limit_w(1)


def test_other_error_on_write_raises_gpu_error(fake: FakeNvml) -> None:
    fake.devices[0].fail = {"set_limit": NVMLError_GpuIsLost()}
    with NvmlGpu(nvml=fake) as gpu, pytest.raises(GpuError) as info:
        gpu.set_power_limit_w(0, 400.0)
    assert isinstance(info.value.__cause__, NVMLError_GpuIsLost)


def test_missing_constraints_skip_the_range_check(fake: FakeNvml) -> None:
    fake.devices[0].fail = {"constraints": NVMLError_NotSupported()}
    with NvmlGpu(nvml=fake) as gpu:
        assert math.isnan(gpu.devices()[0].power_limit_min_w)
        assert gpu.set_power_limit_w(0, 650.0).applied  # NVML itself is the judge then


# --- lifetime and probing ------------------------------------------------------------------


def test_init_failure_is_gpu_unavailable_from_the_vendor_error() -> None:
    err = NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    fake = FakeNvml([], init_error=err)
    with pytest.raises(GpuUnavailableError) as info:
        NvmlGpu(nvml=fake)
    assert info.value.__cause__ is err
    assert info.value.reason == "NVMLError_LibraryNotFound"
    assert fake.shutdown_calls == 0


def test_close_is_idempotent_and_closed_gpu_refuses(fake: FakeNvml) -> None:
    gpu = NvmlGpu(nvml=fake)
    gpu.close()
    gpu.close()
    assert fake.shutdown_calls == 1
    with pytest.raises(GpuError, match="closed"):
        gpu.sample()


def test_probe_auto_degrades_with_a_one_line_reason() -> None:
    fake = FakeNvml([], init_error=NVMLError_LibraryNotFound())
    probe, reason = probe_gpus("auto", nvml=fake)
    assert probe is None
    assert reason == "no NVIDIA GPU (NVMLError_LibraryNotFound)"


def test_probe_auto_needs_at_least_one_device() -> None:
    fake = FakeNvml([])
    probe, reason = probe_gpus(nvml=fake)
    assert probe is None and "0 devices" in reason and fake.shutdown_calls == 1


def test_probe_auto_uses_nvml_when_it_works(fake: FakeNvml) -> None:
    probe, reason = probe_gpus(nvml=fake)
    assert isinstance(probe, NvmlGpu) and reason.startswith("NVML: 2 GPU(s)")
    assert "measured" in reason
    probe.close()


def test_probe_explicit_sources_say_what_they_are() -> None:
    sim, why = probe_gpus("simulated", count=3)
    assert isinstance(sim, SimulatedGpu) and len(sim.devices()) == 3 and "simulated" in why
    replay, why = probe_gpus("replay")
    assert isinstance(replay, ReplayGpu) and "replayed" in why
    assert probe_gpus("none") == (None, "GPU telemetry off (prefer=none)")
    with pytest.raises(ValueError):
        probe_gpus("cuda")  # type: ignore[arg-type]


def test_package_imports_without_touching_pynvml() -> None:
    code = "import sys, adapters.gpu; assert 'pynvml' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the real thing, read-only ---------------------------------------------------------------


@pytest.mark.gpu
def test_real_nvml_read_only() -> None:
    """Reads every value through the real pynvml; never calls a setter."""
    try:
        gpu = NvmlGpu()
    except GpuUnavailableError as err:
        pytest.skip(f"no NVIDIA GPU here: NVML could not initialise ({err.reason})")
    with gpu:
        infos = gpu.devices()
        if not infos:
            pytest.skip("NVML initialised but sees no GPU devices")
        for info in infos:
            assert info.source == "nvml" and info.name and info.uuid.startswith(("GPU-", "MIG-"))
            assert info.memory_total_bytes > 0
        samples = gpu.sample()
        assert [s.index for s in samples] == [i.index for i in infos]
        for s in samples:
            assert s.method == "measured"
            assert math.isnan(s.power_w) or 0.0 < s.power_w < 2000.0
            assert math.isnan(s.sm_clock_mhz) or s.sm_clock_mhz > 0
            assert set(s.throttle_names) <= {
                "gpu_idle",
                "applications_clocks",
                "sw_power_cap",
                "hw_slowdown",
                "sync_boost",
                "sw_thermal",
                "hw_thermal",
                "hw_power_brake",
                "display_clocks",
            }
        try:
            first = gpu.energy_j(0)
            assert first >= 0 and gpu.energy_j(0) >= first
        except GpuNotSupportedError:
            pass  # pre-Volta boards have no energy counter
        try:
            limit = gpu.power_limit_w(0)
        except GpuNotSupportedError:
            return
        lo, hi = infos[0].power_limit_min_w, infos[0].power_limit_max_w
        assert math.isnan(lo) or lo - 1 <= limit <= hi + 1
