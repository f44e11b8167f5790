"""GpuSettingsGuard: originals journaled before writing and always restored, through NvmlGpu
on a fake NVML and the SQL journal on SQLite and PostgreSQL (the ``db_url`` fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from adapters.gpu import (
    GpuSettingsGuard,
    MemorySettingsJournal,
    NvmlGpu,
    SimulatedGpu,
)
from adapters.store.db import Store
from adapters.store.gpu_settings import SqlSettingsJournal

TESTS = Path(__file__).parent
ROOT = TESTS.parent

# --- fake NVML over boards that outlive any one "process" ------------------------------------


class NVMLError(Exception):
    pass


class NVMLError_NoPermission(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


@dataclass
class Board:
    """The physical device: its state survives when a FakeNvml (a process) goes away."""

    uuid: str
    limit_mw: int = 700_000
    min_mw: int = 200_000
    max_mw: int = 700_000
    refuse_with: type[NVMLError] | None = None  # raised by the setter when set
    on_set: Any = None  # called inside the setter (to deliver a signal mid-write)


class FakeNvml:
    NVMLError = NVMLError
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, boards: list[Board]) -> None:
        self.boards = boards
        self.writes: list[tuple[int, int]] = []

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlDeviceGetCount(self) -> int:
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H200"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.boards[h].uuid

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=150_754_820_096)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        return [self.boards[h].min_mw, self.boards[h].max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return 700_000

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return self.boards[h].limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, h: int, mw: int) -> None:
        board = self.boards[h]
        if board.refuse_with is not None:
            raise board.refuse_with()
        if board.on_set is not None:
            board.on_set()
        self.writes.append((h, mw))
        board.limit_mw = mw


def make_guard(boards: list[Board], journal: Any) -> tuple[GpuSettingsGuard, FakeNvml]:
    """A fresh 'process': new NVML session and guard over the same boards and journal."""
    fake = FakeNvml(boards)
    gpu = NvmlGpu(nvml=fake)
    return GpuSettingsGuard(gpu, journal, gpu.devices()), fake


@pytest.fixture
def boards() -> list[Board]:
    return [Board("GPU-aaaa"), Board("GPU-bbbb", limit_mw=650_000)]


@pytest.fixture
def sql_store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    store.create_all()
    try:
        yield store
    finally:
        store.dispose()


def test_the_table_is_registered_with_the_others() -> None:
    """af_gpu_setting is created by Store.create_all without importing the journal module."""
    code = (
        "import sys; from sqlmodel import SQLModel; import adapters.store.db; "
        "assert 'af_gpu_setting' in SQLModel.metadata.tables; "
        "assert 'adapters.store.gpu_settings' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --- on both databases --------------------------------------------------------------------------


def test_apply_then_restore(boards: list[Board], sql_store: Store) -> None:
    journal = SqlSettingsJournal(sql_store)
    guard, _ = make_guard(boards, journal)
    result = guard.apply_power_limit_w(0, 450.0, reason="energy budget: cap for cycle c1")
    assert result.applied and result.previous == 700.0 and boards[0].limit_mw == 450_000
    (entry,) = journal.pending()
    assert (entry.device_uuid, entry.knob, entry.original_value, entry.applied_value) == (
        "GPU-aaaa",
        "power_limit_w",
        700.0,
        450.0,
    )
    assert entry.reason == "energy budget: cap for cycle c1" and entry.restored_at is None
    restored = guard.restore_all()
    assert [(r.status, r.requested) for r in restored] == [("applied", 700.0)]
    assert boards[0].limit_mw == 700_000 and journal.pending() == []
    (done,) = journal.history()
    assert done.restored_at is not None
    assert guard.restore_all() == []  # nothing left to do


def test_apply_twice_keeps_the_first_original(boards: list[Board], sql_store: Store) -> None:
    journal = SqlSettingsJournal(sql_store)
    guard, _ = make_guard(boards, journal)
    guard.apply_power_limit_w(1, 500.0, reason="first")
    second = guard.apply_power_limit_w(1, 400.0, reason="second")
    assert second.applied and second.previous == 500.0
    (entry,) = journal.pending()
    assert (entry.original_value, entry.applied_value, entry.reason) == (650.0, 400.0, "second")
    guard.restore_all()
    assert boards[1].limit_mw == 650_000


@pytest.mark.parametrize(
    ("refusal", "status"),
    [(NVMLError_NoPermission, "not_permitted"), (NVMLError_NotSupported, "unsupported")],
)
def test_refusal_is_returned_and_leaves_no_row(
    boards: list[Board], sql_store: Store, refusal: type[NVMLError], status: str
) -> None:
    journal = SqlSettingsJournal(sql_store)
    boards[0].refuse_with = refusal
    guard, _ = make_guard(boards, journal)
    result = guard.apply_power_limit_w(0, 300.0, reason="try")
    assert result.status == status and not result.applied
    assert journal.history() == [] and boards[0].limit_mw == 700_000


def test_crash_then_restart_restores_the_original(boards: list[Board], db_url: str) -> None:
    first_store = Store(db_url)
    first_store.create_all()
    guard, _ = make_guard(boards, SqlSettingsJournal(first_store))
    assert guard.apply_power_limit_w(0, 350.0, reason="before the crash").applied
    assert guard.apply_power_limit_w(1, 600.0, reason="before the crash").applied
    del guard  # the process dies: no restore, no NVML shutdown
    first_store.dispose()

    second_store = Store(db_url)  # the next start: new NVML session, same boards, same DB
    second_store.create_all()
    try:
        journal = SqlSettingsJournal(second_store)
        guard, fake = make_guard(boards, journal)
        results = guard.restore_all()
        assert sorted((r.index, r.status) for r in results) == [(0, "applied"), (1, "applied")]
        assert (boards[0].limit_mw, boards[1].limit_mw) == (700_000, 650_000)
        assert fake.writes == [(0, 700_000), (1, 650_000)]
        assert journal.pending() == []
        assert all(e.restored_at is not None for e in journal.history())
    finally:
        second_store.dispose()


# --- journal-independent behaviour (in memory) ---------------------------------------------------


def test_unchanged_and_out_of_range_leave_no_entry(boards: list[Board]) -> None:
    journal = MemorySettingsJournal()
    guard, fake = make_guard(boards, journal)
    assert guard.apply_power_limit_w(0, 700.0, reason="same").status == "unchanged"
    assert guard.apply_power_limit_w(0, 150.0, reason="too low").status == "out_of_range"
    assert guard.apply_power_limit_w(0, float("nan"), reason="nan").status == "out_of_range"
    assert journal.all() == [] and fake.writes == []


def test_restore_that_is_refused_stays_pending(boards: list[Board]) -> None:
    journal = MemorySettingsJournal()
    guard, _ = make_guard(boards, journal)
    guard.apply_power_limit_w(0, 400.0, reason="cap")
    boards[0].refuse_with = NVMLError_NoPermission  # e.g. restarted without root
    (result,) = guard.restore_all()
    assert result.status == "not_permitted" and len(journal.pending()) == 1
    boards[0].refuse_with = None
    assert [r.status for r in guard.restore_all()] == ["applied"]
    assert journal.pending() == []


def test_entry_for_an_absent_device_is_left_pending(boards: list[Board]) -> None:
    journal = MemorySettingsJournal()
    journal.record_original("GPU-elsewhere", "power_limit_w", 700.0, 300.0, "other host")
    guard, _ = make_guard(boards, journal)
    (result,) = guard.restore_all()
    assert (result.status, result.index) == ("unsupported", -1)
    assert "not present" in result.message and len(journal.pending()) == 1


def test_context_manager_restores_on_exit(boards: list[Board]) -> None:
    journal = MemorySettingsJournal()
    guard, _ = make_guard(boards, journal)
    with guard:
        guard.apply_power_limit_w(1, 250.0, reason="cap")
        assert boards[1].limit_mw == 250_000
    assert boards[1].limit_mw == 650_000


def test_guard_over_the_simulator() -> None:
    gpu = SimulatedGpu(count=1, permitted=False)
    journal = MemorySettingsJournal()
    guard = GpuSettingsGuard(gpu, journal, gpu.devices())
    assert guard.apply_power_limit_w(0, 500.0, reason="cap").status == "not_permitted"
    assert journal.all() == []
    gpu.permitted = True
    assert guard.apply_power_limit_w(0, 500.0, reason="cap").applied
    guard.restore_all()
    assert gpu.power_limit_w(0) == 700.0


# --- SIGTERM ----------------------------------------------------------------------------------


@pytest.fixture
def sigterm_calls() -> Iterator[list[int]]:
    """A stand-in for the daemon's own SIGTERM handler (sets its stop flag)."""
    calls: list[int] = []

    def daemon_handler(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    original = signal.signal(signal.SIGTERM, daemon_handler)
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, original)


def test_sigterm_restores_then_runs_the_previous_handler(
    boards: list[Board], sigterm_calls: list[int]
) -> None:
    guard, _ = make_guard(boards, MemorySettingsJournal())
    uninstall = guard.install_exit_hooks(signals=(signal.SIGTERM,))
    try:
        guard.apply_power_limit_w(0, 300.0, reason="cap")
        os.kill(os.getpid(), signal.SIGTERM)
        assert boards[0].limit_mw == 700_000
        assert sigterm_calls == [signal.SIGTERM]
    finally:
        uninstall()
    assert signal.getsignal(signal.SIGTERM) != guard._on_signal  # the daemon's handler is back
    # restored on the way out: nothing may change any more
    refused = guard.apply_power_limit_w(0, 300.0, reason="late")
    assert refused.status == "not_permitted" and "exiting" in refused.message
    assert boards[0].limit_mw == 700_000


def test_sigterm_during_the_write_is_handled_after_it(
    boards: list[Board], sigterm_calls: list[int]
) -> None:
    journal = MemorySettingsJournal()
    guard, _ = make_guard(boards, journal)
    uninstall = guard.install_exit_hooks(signals=(signal.SIGTERM,))

    def sigterm_once() -> None:
        boards[0].on_set = None
        os.kill(os.getpid(), signal.SIGTERM)

    boards[0].on_set = sigterm_once
    try:
        result = guard.apply_power_limit_w(0, 300.0, reason="cap")
    finally:
        uninstall()
    assert result.applied  # the write completed ...
    assert boards[0].limit_mw == 700_000  # ... and was undone by the deferred handler
    assert journal.pending() == [] and sigterm_calls == [signal.SIGTERM]


def test_no_signal_is_taken_unless_asked(boards: list[Board], sigterm_calls: list[int]) -> None:
    """The default leaves SIGTERM to its owner (a daemon whose handler only sets a flag)."""
    guard, _ = make_guard(boards, MemorySettingsJournal())
    before = signal.getsignal(signal.SIGTERM)
    uninstall = guard.install_exit_hooks()
    try:
        assert signal.getsignal(signal.SIGTERM) is before
        with pytest.raises(RuntimeError, match="already installed"):
            guard.install_exit_hooks()
    finally:
        uninstall()
    guard.install_exit_hooks()()  # installable again once removed


# --- interpreter exit (a process of its own per case) ------------------------------------------

_EXIT_SCRIPT = """
import os, sys, threading
sys.path[:0] = {path!r}
import fake_nvml_module
from adapters.gpu import GpuSettingsGuard, MemorySettingsJournal, NvmlGpu

gpu = NvmlGpu(nvml=fake_nvml_module)
guard = GpuSettingsGuard(gpu, MemorySettingsJournal(), gpu.devices())
guard.install_exit_hooks(
    on_restored=lambda rs: print("restored", [r.requested for r in rs], flush=True)
)

def limit():
    return int(gpu.power_limit_w(0))

def cap(watts):
    assert guard.apply_power_limit_w(0, watts, reason="trial").applied

cap(300.0)
{ending}
"""

_ENDINGS = {
    # the main thread dies with an exception the daemon's code never caught
    "unhandled": "raise RuntimeError('boom')",
    "sys_exit": "sys.exit(3)",
    # sys.exit in another thread ends that thread only: the process lives on, then exits
    "thread_sys_exit": "t = threading.Thread(target=sys.exit); t.start(); t.join()\n"
    "print('alive at', limit(), flush=True)",
    # the owner's clean-up restored, then a line's thread applied again before exiting
    "after_cleanup": "guard.restore_all()\n"
    "t = threading.Thread(target=cap, args=(250.0,)); t.start(); t.join()",
    # a forked child that exits normally must leave the parent's settings alone
    "forked_child": "pid = os.fork()\n"
    "if pid == 0:\n    sys.exit(0)\n"
    "os.waitpid(pid, 0)\nprint('after child', limit(), flush=True)",
    # nothing runs: the journal (durable in the daemon) is restored at the next start
    "os_exit": "sys.stdout.flush(); os._exit(0)",
}


@pytest.mark.parametrize("ending", sorted(_ENDINGS))
def test_exit_hook_restores_on_interpreter_exit(tmp_path: Path, ending: str) -> None:
    state = tmp_path / "gpu.json"
    code = _EXIT_SCRIPT.format(path=[str(ROOT), str(TESTS)], ending=_ENDINGS[ending])
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "AIFACTORY_FAKE_NVML_STATE": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    final_mw = json.loads(state.read_text())["limit_mw"]
    if ending == "os_exit":
        assert res.returncode == 0 and final_mw == 300_000 and "restored" not in res.stdout
        return
    assert res.returncode == {"unhandled": 1, "sys_exit": 3}.get(ending, 0), res.stderr
    assert final_mw == 700_000, res.stdout + res.stderr
    assert res.stdout.count("restored [700.0]") == 1, res.stdout + res.stderr
    if ending == "thread_sys_exit":
        assert "alive at 300" in res.stdout
    if ending == "forked_child":
        assert res.stdout.index("after child 300") < res.stdout.index("restored")
