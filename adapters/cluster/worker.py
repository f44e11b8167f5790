"""The trial worker: a process of its own, so a crashing trial fails only itself.

It takes jobs from its pipe one at a time and may serve many trials (the daemon reuses it:
on a GPU the interpreter, torch and the CUDA context cost several times the energy of a
small trial). For each job it trains through the workload protocol, brackets the run with
an energy meter, streams progress to the parent and stops when asked, when its energy share
is spent, or when the parent process has died (no orphans burning power after a
`kill -9`). A fresh worker measures its start-up (torch import, CUDA context) in a window of
its own and reports it beside its first trial's reading, so the day's ledger counts it but
the trial's cost, which tuning compares across trials, does not. Between jobs it waits at
most ``idle_s`` seconds, then exits and frees what it holds.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from adapters.cluster.base import TrialJob
from adapters.energy import EnergyMeter, EnergyReading, probe_energy_meter
from adapters.workload.loader import load_workload

_PARENT_CHECK_S = 1.0
_FIRST_JOB_WAIT_S = 60.0

_Meters = dict[tuple[bool, float], tuple[EnergyMeter, str]]


def worker_main(conn: Connection, idle_s: float) -> None:
    """Entry point of the worker process: run jobs until told to exit, idle or orphaned."""
    # While a trial runs, signals are the daemon's business: it asks us to stop through the
    # pipe, so a terminal's Ctrl-C or a service manager's SIGTERM to the whole group must
    # not kill the trial. While idle, SIGTERM ends the worker (nothing is lost).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    meters: _Meters = {}
    wait_s = max(idle_s, _FIRST_JOB_WAIT_S)  # the first job is on its way as we start
    fresh = True
    try:
        while True:
            job = _next_job(conn, parent, wait_s)
            if job is None:
                return
            wait_s = idle_s
            if not _run_job(job, conn, parent, meters, fresh):
                return
            fresh = False
            gc.collect()
            _free_gpu_cache()
    finally:
        for meter, _ in meters.values():
            with contextlib.suppress(Exception):
                meter.close()  # type: ignore[attr-defined]
        conn.close()


def _next_job(conn: Connection, parent: int, idle_s: float) -> TrialJob | None:
    """Wait for a job; None when told to exit, idle for ``idle_s`` or orphaned."""
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            return None
        try:
            if not conn.poll(min(_PARENT_CHECK_S, max(0.0, deadline - time.monotonic()))):
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return None  # the parent closed its end
        if isinstance(msg, tuple) and msg[0] == "job":
            return msg[1]
        if msg == "exit":
            return None
        # anything else is a stale "stop" for a job that had already finished
    return None


def _meter(job: TrialJob, meters: _Meters, gpu_usable: bool | None) -> tuple[EnergyMeter, str]:
    """The meter this job asks for, probed once per worker and kept; re-probed if it broke."""
    wanted = (job.prefer_gpu and job.request.device != "cpu", job.watts_per_core)
    if gpu_usable is False:
        wanted = (False, job.watts_per_core)  # the board is there but torch cannot use it
    if wanted not in meters:
        meters[wanted] = probe_energy_meter(prefer_gpu=wanted[0], watts_per_core=wanted[1])
    return meters[wanted]


def _begin(
    job: TrialJob, meters: _Meters, gpu_usable: bool | None
) -> tuple[EnergyMeter, str, object]:
    meter, note = _meter(job, meters, gpu_usable)
    try:
        return meter, note, meter.begin()
    except Exception:  # e.g. the GPU went away while we idled: probe again (may fall back)
        meters.clear()
        meter, note = _meter(job, meters, gpu_usable)
        return meter, note, meter.begin()


def _start_up(job: TrialJob, meters: _Meters) -> tuple[EnergyReading | None, bool]:
    """Import torch and create the CUDA context inside a window of their own."""
    meter, _, window = _begin(job, meters, None)
    import torch

    usable = torch.cuda.is_available()
    if usable and job.prefer_gpu and job.request.device != "cpu":
        with contextlib.suppress(Exception):  # a bad device string fails in the workload
            device = job.request.device
            torch.zeros(1, device="cuda" if device in ("auto", "cuda") else device)
    reading = meter.end(window)
    if meter.method == "measured" and not usable:
        return None, usable  # it metered a board the trial will not use
    return reading, usable


def _run_job(job: TrialJob, conn: Connection, parent: int, meters: _Meters, fresh: bool) -> bool:
    """Run one trial; every path sends exactly one final message. False: exit afterwards."""
    state: dict[str, Any] = {"stop": None, "checked": 0.0, "exit": False}
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        startup, usable = _start_up(job, meters) if fresh else (None, None)
        import torch

        if usable is None:
            usable = torch.cuda.is_available()
        meter, note, window = _begin(job, meters, usable)
        torch.set_num_threads(max(1, job.request.threads))
        workload = load_workload(job.workload)

        def should_stop() -> bool:
            if state["stop"]:
                return True
            if conn.poll():
                msg = conn.recv()
                if msg in ("stop", "exit"):
                    state["stop"] = "stopped"
                    state["exit"] = msg == "exit"
            if os.getppid() != parent:
                state["stop"] = "parent died"
            now = time.monotonic()
            if job.max_joules is not None and now - state["checked"] > 1.0:
                state["checked"] = now
                if meter.end(window).joules >= job.max_joules:
                    state["stop"] = "energy share spent"
            return bool(state["stop"])

        result = workload.train(
            job.request,
            progress=lambda p: conn.send(("progress", job.key, p)),
            should_stop=should_stop,
        )
        reading = meter.end(window)
        # idle again before the parent hears of it: a parent that exits right away
        # terminates its daemonic children, and an ignored SIGTERM would be lost
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.send(("done", result, reading, note, state["stop"], startup))
    except BaseException as exc:  # report everything; the parent decides what it means
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))
        return False  # a failed trial may leave the process in a bad state: start afresh
    return not state["exit"] and state["stop"] != "parent died"


def _free_gpu_cache() -> None:
    """Give cached GPU memory back between trials, so an idle worker holds only its context."""
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
