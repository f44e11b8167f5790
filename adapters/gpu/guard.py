"""GPU settings that are always put back: the *act* side's safety net.

Where it sits in the loop: the energy agent decides a power limit; the daemon applies it
through :class:`GpuSettingsGuard`, never through :class:`~adapters.gpu.base.GpuControl`
directly. The guard writes the device's ORIGINAL value to a durable journal *before*
changing anything, so whatever happens next the original can be restored:

* normal exit -> the owner calls :meth:`GpuSettingsGuard.restore_all` (or ``with guard:``);
* interpreter exit the owner's clean-up did not see (the main thread died before or inside
  it, or another thread applied a setting after it) -> the ``atexit`` hook from
  :meth:`GpuSettingsGuard.install_exit_hooks`, which also closes the guard;
* a signal, for processes that have no stop flag of their own -> the same hook on the
  signals asked for, then the previous handler;
* crash, ``kill -9`` or ``os._exit`` -> the journal still holds the original; the next start
  builds a guard over the same journal and calls :meth:`~GpuSettingsGuard.restore_all` first.

Only the first change of a device+knob is journaled (later changes keep the first
original). A refused write (no permission, unsupported, out of range) changes nothing,
so it leaves no journal entry and comes back as a result, never as an exception.

The journal is a small protocol (:class:`SettingsJournal`); the durable one is
``adapters.store.gpu_settings.SqlSettingsJournal`` and :class:`MemorySettingsJournal`
serves simulations and tests that need no database.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from adapters.gpu.base import (
    KNOB_POWER_LIMIT_W,
    ControlResult,
    GpuControl,
    GpuError,
    GpuInfo,
    GpuNotSupportedError,
)

__all__ = [
    "GpuSettingsGuard",
    "MemorySettingsJournal",
    "SettingsEntry",
    "SettingsJournal",
]

log = logging.getLogger(__name__)

_REFUSED = frozenset({"not_permitted", "unsupported", "out_of_range"})
_SIGNAL_WAIT_S = 10.0
_NAN = float("nan")


@dataclass(frozen=True)
class SettingsEntry:
    """One changed setting awaiting restoration (``restored_at`` None while pending)."""

    id: int
    device_uuid: str
    knob: str
    original_value: float
    applied_value: float
    applied_at: str
    reason: str
    restored_at: str | None = None


@runtime_checkable
class SettingsJournal(Protocol):
    """Durable record of original values; must survive the process that wrote it."""

    def record_original(
        self, device_uuid: str, knob: str, original: float, applied: float, reason: str
    ) -> int:
        """Record before writing. If an entry for this device+knob is still pending it keeps
        its original (only ``applied``/``reason`` are updated) and its id is returned."""
        ...

    def pending(self) -> list[SettingsEntry]:
        """Entries not yet restored, oldest first."""
        ...

    def mark_restored(self, entry_id: int) -> None:
        """The original value is back on the device."""
        ...

    def discard(self, entry_id: int) -> None:
        """The write was refused, nothing changed: forget the entry."""
        ...


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class MemorySettingsJournal:
    """In-process journal for simulations and tests; it does NOT survive a crash."""

    def __init__(self) -> None:
        self._entries: dict[int, SettingsEntry] = {}
        self._ids = itertools.count(1)

    def record_original(
        self, device_uuid: str, knob: str, original: float, applied: float, reason: str
    ) -> int:
        for entry in self.pending():
            if entry.device_uuid == device_uuid and entry.knob == knob:
                self._entries[entry.id] = replace(entry, applied_value=applied, reason=reason)
                return entry.id
        entry_id = next(self._ids)
        self._entries[entry_id] = SettingsEntry(
            entry_id, device_uuid, knob, original, applied, _now_iso(), reason
        )
        return entry_id

    def pending(self) -> list[SettingsEntry]:
        return [e for e in self._entries.values() if e.restored_at is None]

    def all(self) -> list[SettingsEntry]:
        """Every entry, restored or not (for tests and reports)."""
        return list(self._entries.values())

    def mark_restored(self, entry_id: int) -> None:
        self._entries[entry_id] = replace(self._entries[entry_id], restored_at=_now_iso())

    def discard(self, entry_id: int) -> None:
        self._entries.pop(entry_id, None)


def _same_w(a: float, b: float) -> bool:
    """Equal at NVML's milliwatt granularity."""
    return round(a * 1000) == round(b * 1000)


class GpuSettingsGuard:
    """Applies GPU settings through ``control`` with the original journaled first."""

    def __init__(
        self, control: GpuControl, journal: SettingsJournal, devices: Iterable[GpuInfo]
    ) -> None:
        self._control = control
        self._journal = journal
        self._devices = {d.index: d for d in devices}
        self._index_by_uuid = {d.uuid: d.index for d in self._devices.values()}
        # Re-entrant: a signal handler runs on the main thread, possibly inside apply().
        self._lock = threading.RLock()
        self._applying_thread: int | None = None
        self._deferred_signal: tuple[int, FrameType | None] | None = None
        self._hooks: dict[int, Any] = {}
        self._closed = False  # set once an exit path restored: nothing may change after it
        self._on_restored: Callable[[list[ControlResult]], None] | None = None
        self._owner_pid: int | None = None  # the process whose atexit hook this is

    # --- act -------------------------------------------------------------------------------

    def apply_power_limit_w(self, index: int, watts: float, reason: str) -> ControlResult:
        """Journal the original (first change only), then write; refusals leave no entry.

        Once an exit hook has restored (the process is exiting), every call is refused.
        """
        info = self._devices.get(index)
        if info is None:
            raise GpuError(f"guard has no GPU {index} (known: {sorted(self._devices)})")
        with self._lock:
            if self._closed:
                return ControlResult(
                    "not_permitted",
                    index,
                    KNOB_POWER_LIMIT_W,
                    None,
                    watts,
                    "the process is exiting: GPU settings were restored and stay so",
                )
            outer = self._applying_thread is None
            self._applying_thread = threading.get_ident()
            try:
                return self._apply(info, watts, reason)
            finally:
                if outer:
                    self._applying_thread = None
                    deferred, self._deferred_signal = self._deferred_signal, None
                    if deferred is not None:  # a signal arrived mid-write: handle it now
                        self._on_signal(*deferred)

    def _apply(self, info: GpuInfo, watts: float, reason: str) -> ControlResult:
        index, knob = info.index, KNOB_POWER_LIMIT_W
        already = any(
            e.device_uuid == info.uuid and e.knob == knob for e in self._journal.pending()
        )
        if already:  # the first original is safe; only note what is applied now
            result = self._control.set_power_limit_w(index, watts)
            if result.applied:  # the journal keeps its original; ``previous`` is ignored
                previous = result.previous if result.previous is not None else _NAN
                self._journal.record_original(info.uuid, knob, previous, watts, reason)
            return result
        lo, hi = info.power_limit_min_w, info.power_limit_max_w
        out_of_range = not math.isfinite(watts) or (
            math.isfinite(lo) and math.isfinite(hi) and not lo <= watts <= hi
        )
        if out_of_range:  # the control refuses it without writing; nothing to journal
            return self._control.set_power_limit_w(index, watts)
        try:
            current = self._control.power_limit_w(index)
        except GpuNotSupportedError as err:
            return ControlResult("unsupported", index, knob, None, watts, str(err))
        if _same_w(current, watts):
            return self._control.set_power_limit_w(index, watts)  # "unchanged", no write
        entry_id = self._journal.record_original(info.uuid, knob, current, watts, reason)
        result = self._control.set_power_limit_w(index, watts)
        if result.status in _REFUSED:
            self._journal.discard(entry_id)
        log.info("GPU %d %s: %s (%s)", index, knob, result.status, result.message)
        return result

    def restore_all(self) -> list[ControlResult]:
        """Write every journaled original back and mark it restored.

        Every entry is tried. One that cannot be restored now (device not present, refused)
        stays pending for the next start; if the control raised for any entry, a GpuError
        naming them is raised after all the others were tried.
        """
        results: list[ControlResult] = []
        errors: list[str] = []
        with self._lock:
            for entry in self._journal.pending():
                index = self._index_by_uuid.get(entry.device_uuid)
                if index is None or entry.knob != KNOB_POWER_LIMIT_W:
                    why = "device not present" if index is None else f"unknown knob {entry.knob}"
                    results.append(
                        ControlResult(
                            "unsupported",
                            -1 if index is None else index,
                            entry.knob,
                            None,
                            entry.original_value,
                            f"{entry.device_uuid}: {why}; left pending",
                        )
                    )
                    continue
                try:
                    result = self._control.set_power_limit_w(index, entry.original_value)
                except GpuError as err:
                    errors.append(f"GPU {index} ({entry.device_uuid}): {err}")
                    continue
                if result.status in ("applied", "unchanged"):
                    self._journal.mark_restored(entry.id)
                log.info("GPU %d %s restore: %s", index, entry.knob, result.status)
                results.append(result)
        if errors:
            raise GpuError("could not restore: " + "; ".join(errors))
        return results

    def _restore_quietly(self) -> None:
        """restore_all for exit paths, where raising would hide the original problem."""
        try:
            self.restore_all()
        except Exception:
            log.exception("restoring GPU settings failed; the journal keeps them for next start")

    # --- exit paths --------------------------------------------------------------------------

    def install_exit_hooks(
        self,
        signals: Iterable[int] = (),
        on_restored: Callable[[list[ControlResult]], None] | None = None,
    ) -> Callable[[], None]:
        """Restore at interpreter exit, and on ``signals`` (main thread only), then close.

        For the exit paths its owner's own clean-up does not reach: the main thread ending
        (returning, raising, ``sys.exit``) before or inside that clean-up, or a thread that
        applied a setting after it (``atexit`` runs once non-daemon threads have ended). Only
        in the process that installed it (not in a forked child). After restoring, the guard
        refuses every further change. ``on_restored`` gets what was restored (to audit it);
        its errors are logged. Nothing runs on ``os._exit`` or ``kill -9``: the journal is
        restored at the next start.

        ``signals`` is for processes without a stop flag of their own. The handler runs on
        the main thread between two bytecodes of whatever it interrupted and writes the
        journal there; a daemon whose handler only sets a flag should pass none and restore
        from its own clean-up. The previous handler runs after the restore; a default
        disposition is re-delivered so the process ends as it would have.

        Returns a function that removes the hooks again; installing twice is an error.
        """
        if self._owner_pid is not None:
            raise RuntimeError("exit hooks are already installed on this guard")
        self._owner_pid, self._on_restored = os.getpid(), on_restored
        atexit.register(self._restore_at_exit)
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._hooks[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
        return self._uninstall_exit_hooks

    def _uninstall_exit_hooks(self) -> None:
        atexit.unregister(self._restore_at_exit)
        for sig, previous in list(self._hooks.items()):
            if signal.getsignal(sig) == self._on_signal:  # else someone replaced us: keep theirs
                signal.signal(sig, previous)
            del self._hooks[sig]
        self._owner_pid = self._on_restored = None

    def _restore_at_exit(self) -> None:
        """The exit hook: restore, report, and refuse changes from now on. A write still in
        progress on another (daemon) thread is waited for, at most ``_SIGNAL_WAIT_S``."""
        if os.getpid() != self._owner_pid:
            return  # a forked child exiting: the settings belong to the parent
        if not self._lock.acquire(timeout=_SIGNAL_WAIT_S):
            log.error("GPU settings busy at exit; the journal restores them at next start")
            return
        try:
            self._closed = True
            results = self.restore_all()
        except Exception:
            log.exception("restoring GPU settings at exit failed; the journal keeps them")
            return
        finally:
            self._lock.release()
        if results and self._on_restored is not None:
            try:
                self._on_restored(results)
            except Exception:
                log.exception("reporting the GPU settings restored at exit failed")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Restore, then hand over to the previous handler.

        A signal that lands while this same thread is inside apply() (between journaling
        and writing) is handled when apply() returns, so the write it interrupted is undone
        too; another thread's apply() is waited for, at most ``_SIGNAL_WAIT_S``.
        """
        if self._applying_thread == threading.get_ident():
            self._deferred_signal = (signum, frame)
            return
        self._restore_at_exit()
        previous = self._hooks.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __enter__(self) -> GpuSettingsGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore_quietly()
