"""The trial worker: a process of its own, so a crashing trial fails only itself.

It takes jobs from its pipe one at a time and may serve many trials (the daemon reuses it:
on a GPU the interpreter, torch and the CUDA context cost several times the energy of a
small trial). For each job it trains through the workload protocol, brackets the run with
an energy meter, streams progress to the parent and stops when asked, when its energy share
is spent, or when the parent process has died (no orphans burning power after a
`kill -9`). The first job's energy window opens before torch is imported, so a worker's
start-up is booked to the trial that caused it rather than to nobody. Between jobs it waits
at most ``idle_s`` seconds, then exits and frees what it holds.
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
from adapters.energy import EnergyMeter, probe_energy_meter

_PARENT_CHECK_S = 1.0
_FIRST_JOB_WAIT_S = 60.0


def worker_main(conn: Connection, idle_s: float) -> None:
    """Entry point of the worker process: run jobs until told to exit, idle or orphaned."""
    # Signals are the daemon's business: it asks us to stop through the pipe. A terminal's
    # Ctrl-C or a service manager's SIGTERM to the whole group must not kill the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    meters: dict[tuple[bool, float], tuple[EnergyMeter, str]] = {}
    wait_s = max(idle_s, _FIRST_JOB_WAIT_S)  # the first job is on its way as we start
    try:
        while True:
            job = _next_job(conn, parent, wait_s)
            wait_s = idle_s
            if job is None:
                return
            wanted = (job.prefer_gpu and job.request.device != "cpu", job.watts_per_core)
            if wanted not in meters:
                meters[wanted] = probe_energy_meter(prefer_gpu=wanted[0], watts_per_core=wanted[1])
            if not _run_job(job, conn, parent, meters[wanted]):
                return
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


def _run_job(job: TrialJob, conn: Connection, parent: int, probed: tuple[EnergyMeter, str]) -> bool:
    """Run one trial; every path sends exactly one final message. False: exit afterwards."""
    meter, note = probed
    window = meter.begin()  # first job: before torch is imported, so start-up is booked
    state: dict[str, Any] = {"stop": None, "checked": 0.0, "exit": False}
    try:
        import torch

        if meter.method == "measured" and not torch.cuda.is_available():
            # the board is there but torch cannot use it: this trial runs on the CPU
            meter, note = probe_energy_meter(prefer_gpu=False, watts_per_core=job.watts_per_core)
            window = meter.begin()
        torch.set_num_threads(max(1, job.request.threads))
        from adapters.workload.protocol import load_workload

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
            progress=lambda p: conn.send(("progress", p)),
            should_stop=should_stop,
        )
        reading = meter.end(window)
        conn.send(("done", result, reading, note, state["stop"]))
    except BaseException as exc:  # report everything; the parent decides what it means
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
