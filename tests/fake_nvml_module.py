"""A pynvml-compatible fake whose board state lives in a JSON file, so it survives the
daemon being killed: the stand-in for a real GPU in restore-after-crash tests.

The state file is named by AIFACTORY_FAKE_NVML_STATE; the daemon loads this module when
AIFACTORY_NVML_MODULE=fake_nvml_module (tests put this folder on PYTHONPATH). With
AIFACTORY_FAKE_NVML_FREEZE_AT_MW=<milliwatts>, writing that limit is the last thing the
process does: it is written, ``<state>.frozen`` says so, and the writing thread blocks for
good, so a test can kill the process at exactly that point instead of guessing a moment.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


class NVMLError_NoPermission(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


def _path() -> Path:
    return Path(os.environ["AIFACTORY_FAKE_NVML_STATE"])


def _load() -> dict[str, Any]:
    p = _path()
    if not p.exists():
        return {"limit_mw": 700_000, "energy_mj": 0, "writes": []}
    return json.loads(p.read_text())


def _save(state: dict[str, Any]) -> None:
    tmp = _path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, _path())


def nvmlInit() -> None:
    _save(_load())


def nvmlShutdown() -> None:
    return None


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(i: int) -> int:
    return i


def nvmlDeviceGetName(h: int) -> str:
    return "NVIDIA H200 (fake)"


def nvmlDeviceGetUUID(h: int) -> str:
    return "GPU-fake-0000"


def nvmlDeviceGetCudaComputeCapability(h: int) -> tuple[int, int]:
    return (9, 0)


def nvmlDeviceGetMemoryInfo(h: int) -> Any:
    return SimpleNamespace(total=150_754_820_096, used=0, free=150_754_820_096)


def nvmlDeviceGetPowerManagementLimitConstraints(h: int) -> list[int]:
    return [200_000, 700_000]


def nvmlDeviceGetPowerManagementDefaultLimit(h: int) -> int:
    return 700_000


def nvmlDeviceGetPowerManagementLimit(h: int) -> int:
    return int(_load()["limit_mw"])


def nvmlDeviceSetPowerManagementLimit(h: int, mw: int) -> None:
    state = _load()
    state["limit_mw"] = int(mw)
    state["writes"].append(int(mw))
    _save(state)
    if os.environ.get("AIFACTORY_FAKE_NVML_FREEZE_AT_MW") == str(int(mw)):
        frozen_path().write_text(str(os.getpid()))
        threading.Event().wait()  # frozen right after the write, until killed


def frozen_path() -> Path:
    """Exists once a process froze after writing the limit it was told to freeze at."""
    return _path().with_suffix(".frozen")


def nvmlDeviceGetPowerUsage(h: int) -> int:
    return 150_000


def nvmlDeviceGetTotalEnergyConsumption(h: int) -> int:
    return int(_load()["energy_mj"])


def nvmlDeviceGetUtilizationRates(h: int) -> Any:
    return SimpleNamespace(gpu=50, memory=20)


def nvmlDeviceGetClockInfo(h: int, kind: int) -> int:
    return 1980 if kind == NVML_CLOCK_SM else 3201


def nvmlDeviceGetTemperature(h: int, kind: int) -> int:
    return 40


def nvmlDeviceGetCurrentClocksEventReasons(h: int) -> int:
    return 0
