"""Tests for adapters.energy: host CPU estimate, NVML meter against a fake, probe fallback."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from adapters.energy import (
    EnergyCounterResetError,
    EnergyMeter,
    GpuUnavailableError,
    HostCpuEnergyMeter,
    NvmlEnergyMeter,
    probe_energy_meter,
)


def _busy(seconds: float) -> None:
    """Burn about ``seconds`` of process CPU time (wall-capped), robust to a loaded box."""
    cpu_target = time.process_time() + seconds
    wall_cap = time.perf_counter() + 20 * seconds
    x = 0
    while time.process_time() < cpu_target and time.perf_counter() < wall_cap:
        x += 1


# --- host CPU estimate ---------------------------------------------------------------------


def test_host_busy_loop_joules_equal_cpu_seconds_times_watts() -> None:
    meter = HostCpuEnergyMeter(watts_per_core=20.0)
    token = meter.begin()
    _busy(0.3)
    reading = meter.end(token)
    assert reading.method == "estimated" == meter.method
    assert "20.0 W/core" in reading.source
    assert reading.cpu_seconds >= 0.25  # the loop really burned CPU
    assert reading.joules == reading.cpu_seconds * 20.0
    assert reading.seconds >= 0.29


def test_host_sleep_is_near_zero_without_idle_power() -> None:
    meter = HostCpuEnergyMeter(watts_per_core=15.0)
    token = meter.begin()
    time.sleep(0.2)
    reading = meter.end(token)
    assert reading.seconds >= 0.19
    assert reading.cpu_seconds < 0.05
    assert reading.joules == pytest.approx(reading.cpu_seconds * 15.0)
    assert reading.joules < 0.75


def test_host_idle_power_charges_wall_seconds() -> None:
    meter = HostCpuEnergyMeter(watts_per_core=15.0, idle_w=10.0)
    assert "10.0 W idle" in meter.source
    token = meter.begin()
    time.sleep(0.2)
    reading = meter.end(token)
    assert reading.joules == pytest.approx(reading.cpu_seconds * 15.0 + 10.0 * reading.seconds)
    assert reading.joules >= 10.0 * 0.19


@pytest.mark.parametrize("watts", [0.0, -1.0, float("nan"), float("inf")])
def test_host_rejects_bad_watts(watts: float) -> None:
    with pytest.raises(ValueError, match="watts_per_core"):
        HostCpuEnergyMeter(watts_per_core=watts)


def test_host_rejects_negative_idle() -> None:
    with pytest.raises(ValueError, match="idle_w"):
        HostCpuEnergyMeter(idle_w=-1.0)


def test_token_from_another_meter_is_rejected() -> None:
    a, b = HostCpuEnergyMeter(), HostCpuEnergyMeter()
    with pytest.raises(ValueError, match="begin"):
        b.end(a.begin())
    with pytest.raises(ValueError):
        a.end(object())


def test_host_meter_satisfies_protocol() -> None:
    assert isinstance(HostCpuEnergyMeter(), EnergyMeter)


# --- fake NVML -----------------------------------------------------------------------------


class NVMLError(Exception):
    pass


# Subclass names mirror pynvml's generated NVMLError_* classes.
class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class FakeNvml:
    """Just enough of pynvml: counters in mJ that tests advance by hand."""

    NVMLError = NVMLError

    def __init__(
        self,
        counters_mj: Sequence[int] = (1_000_000, 5_000_000),
        init_error: BaseException | None = None,
        energy_error: BaseException | None = None,
        energy_error_devices: Sequence[int] = (),
    ) -> None:
        self.counters = list(counters_mj)
        self.init_error = init_error
        self.energy_error = energy_error
        self.energy_error_devices = set(energy_error_devices)
        self.init_calls = 0
        self.shutdown_calls = 0
        self.energy_reads = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.counters)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.counters):
            raise NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-uuid{handle}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self.energy_reads += 1
        if self.energy_error is not None and handle in self.energy_error_devices:
            raise self.energy_error
        return self.counters[handle]


def test_nvml_sums_two_devices() -> None:
    fake = FakeNvml()
    meter = NvmlEnergyMeter(nvml=fake)
    assert meter.method == "measured"
    assert meter.source == "nvml:GPU-uuid0,GPU-uuid1"
    reads_after_setup = fake.energy_reads
    token = meter.begin()
    fake.counters[0] += 1_500  # 1.5 J
    fake.counters[1] += 250_000  # 250 J
    reading = meter.end(token)
    assert reading.method == "measured"
    assert reading.joules == pytest.approx(251.5)
    assert reading.source == "nvml:GPU-uuid0,GPU-uuid1"
    assert reading.seconds >= 0.0 and reading.cpu_seconds >= 0.0
    # counters are read only at the two window edges: one read per device per edge
    assert fake.energy_reads - reads_after_setup == 4
    meter.close()
    meter.close()
    assert fake.init_calls == 1 and fake.shutdown_calls == 1


def test_nvml_selected_device_only() -> None:
    fake = FakeNvml()
    with NvmlEnergyMeter(device_indices=[1], nvml=fake) as meter:
        assert meter.source == "nvml:GPU-uuid1"
        token = meter.begin()
        fake.counters[0] += 9_000
        fake.counters[1] += 2_000
        assert meter.end(token).joules == pytest.approx(2.0)
    assert fake.shutdown_calls == 1


def test_nvml_bytes_uuid_is_decoded() -> None:
    fake = FakeNvml(counters_mj=[0])
    fake.nvmlDeviceGetUUID = lambda handle: b"GPU-old"  # type: ignore[method-assign]
    assert NvmlEnergyMeter(nvml=fake).source == "nvml:GPU-old"


def test_nvml_counter_going_backwards_raises() -> None:
    fake = FakeNvml()
    meter = NvmlEnergyMeter(nvml=fake)
    token = meter.begin()
    fake.counters[1] = 10  # driver reload reset the counter
    with pytest.raises(EnergyCounterResetError, match="GPU 1"):
        meter.end(token)


def test_nvml_read_error_is_translated() -> None:
    fake = FakeNvml()
    meter = NvmlEnergyMeter(nvml=fake)
    token = meter.begin()
    fake.energy_error = NVMLError_GpuIsLost("GPU is lost")
    fake.energy_error_devices = {0}
    with pytest.raises(GpuUnavailableError) as info:
        meter.end(token)
    assert isinstance(info.value.__cause__, NVMLError_GpuIsLost)


def test_nvml_closed_meter_refuses_reads() -> None:
    meter = NvmlEnergyMeter(nvml=FakeNvml())
    meter.close()
    with pytest.raises(RuntimeError, match="closed"):
        meter.begin()


def test_nvml_bad_indices() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        NvmlEnergyMeter(device_indices=[0, 0], nvml=FakeNvml())
    with pytest.raises(ValueError, match="empty"):
        NvmlEnergyMeter(device_indices=[], nvml=FakeNvml())
    fake = FakeNvml()
    with pytest.raises(GpuUnavailableError, match="not present"):
        NvmlEnergyMeter(device_indices=[5], nvml=fake)
    assert fake.shutdown_calls == 1  # init succeeded, so it was undone


def test_nvml_init_error_chains_original() -> None:
    err = NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    fake = FakeNvml(init_error=err)
    with pytest.raises(GpuUnavailableError) as info:
        NvmlEnergyMeter(nvml=fake)
    assert info.value.__cause__ is err
    assert fake.shutdown_calls == 0  # never initialised, nothing to shut down


# --- probe ---------------------------------------------------------------------------------


def test_probe_uses_nvml_when_it_works() -> None:
    meter, reason = probe_energy_meter(nvml=FakeNvml())
    assert isinstance(meter, NvmlEnergyMeter)
    assert meter.method == "measured"
    assert "NVML" in reason and "2 GPU" in reason


def test_probe_falls_back_when_init_fails() -> None:
    fake = FakeNvml(init_error=NVMLError_LibraryNotFound("not found"))
    meter, reason = probe_energy_meter(watts_per_core=12.5, nvml=fake)
    assert isinstance(meter, HostCpuEnergyMeter)
    assert meter.method == "estimated"
    assert meter.watts_per_core == 12.5
    assert reason == (
        "NVML unavailable (NVMLError_LibraryNotFound): using host CPU estimate at 12.5 W/core"
    )


def test_probe_falls_back_when_no_devices() -> None:
    fake = FakeNvml(counters_mj=[])
    meter, reason = probe_energy_meter(nvml=fake)
    assert isinstance(meter, HostCpuEnergyMeter)
    assert "no devices" in reason and "15.0 W/core" in reason
    assert fake.shutdown_calls == 1


def test_probe_falls_back_when_energy_counter_not_supported() -> None:
    fake = FakeNvml(energy_error=NVMLError_NotSupported("Not Supported"), energy_error_devices=[1])
    meter, reason = probe_energy_meter(nvml=fake)
    assert isinstance(meter, HostCpuEnergyMeter)
    assert "NVMLError_NotSupported" in reason and "GPU 1" in reason
    assert fake.shutdown_calls == 1


def test_probe_without_gpu_preference() -> None:
    fake = FakeNvml()
    meter, reason = probe_energy_meter(prefer_gpu=False, nvml=fake)
    assert isinstance(meter, HostCpuEnergyMeter)
    assert "not preferred" in reason
    assert fake.init_calls == 0


def test_probe_rejects_bad_watts_before_probing() -> None:
    fake = FakeNvml()
    with pytest.raises(ValueError):
        probe_energy_meter(watts_per_core=0.0, nvml=fake)
    assert fake.init_calls == 0


def _real_nvml_usable() -> tuple[bool, str]:
    """Probe the real stack once; the reason doubles as the skip message."""
    try:
        NvmlEnergyMeter().close()
    except GpuUnavailableError as err:
        return False, f"no NVIDIA GPU/NVML on this machine ({err.reason})"
    return True, ""


def test_probe_default_on_this_machine() -> None:
    meter, reason = probe_energy_meter()
    usable, _ = _real_nvml_usable()
    if usable:
        assert isinstance(meter, NvmlEnergyMeter)
        meter.close()
    else:
        assert isinstance(meter, HostCpuEnergyMeter)
        assert reason.startswith("NVML unavailable (")
        assert reason.endswith("using host CPU estimate at 15.0 W/core")


# --- real NVML, read-only ------------------------------------------------------------------


@pytest.mark.gpu
def test_real_nvml_window_read_only() -> None:
    usable, why = _real_nvml_usable()
    if not usable:
        pytest.skip(why)
    meter: Any
    with NvmlEnergyMeter() as meter:
        token = meter.begin()
        _busy(0.3)  # span several ~100 ms counter updates
        reading = meter.end(token)
    assert reading.method == "measured"
    assert reading.source.startswith("nvml:")
    assert reading.joules >= 0.0
    assert reading.seconds > 0.0
