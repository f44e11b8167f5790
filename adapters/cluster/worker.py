"""The local trial worker: a process of its own, so a crashing trial fails only itself.

It takes jobs from its pipe one at a time and may serve many trials (the daemon reuses it:
on a GPU the interpreter, torch and the CUDA context cost several times the energy of a
small trial). Each job runs through :func:`~adapters.cluster.execute.execute_trial`; the
worker streams progress to the parent and stops a trial when asked, or when the parent
process has died (no orphans burning power after a `kill -9`). Between jobs it waits at most
``idle_s`` seconds, then exits and frees what it holds.

The pipe protocol (shared with the Ray driver process): the parent sends ``("job", job)``,
``"stop"`` or ``"exit"``; the worker answers ``("progress", key, TrainProgress)``, then one of
``("done", result, reading, note, stop_reason, startup, where)`` or ``("error", text)``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection

from adapters.cluster.base import TrialJob
from adapters.cluster.execute import Meters, close_meters, execute_trial, free_gpu_cache

PARENT_CHECK_S = 1.0
FIRST_JOB_WAIT_S = 60.0


def worker_main(conn: Connection, idle_s: float) -> None:
    """Entry point of the worker process: run jobs until told to exit, idle or orphaned."""
    # While a trial runs, signals are the daemon's business: it asks us to stop through the
    # pipe, so a terminal's Ctrl-C or a service manager's SIGTERM to the whole group must
    # not kill the trial. While idle, SIGTERM ends the worker (nothing is lost).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    meters: Meters = {}
    runs = 0

    def run(job: TrialJob) -> bool:
        nonlocal runs
        runs += 1
        keep = _run_job(job, conn, parent, meters, runs == 1)
        gc.collect()
        free_gpu_cache()
        return keep

    try:
        serve_jobs(conn, parent, idle_s, run)
    finally:
        close_meters(meters)
        conn.close()


def serve_jobs(
    conn: Connection, parent: int, idle_s: float, run: Callable[[TrialJob], bool]
) -> None:
    """Take jobs one at a time until told to exit, idle for ``idle_s``, orphaned, or
    ``run`` says the process should not take another."""
    wait_s = max(idle_s, FIRST_JOB_WAIT_S)  # the first job is on its way as we start
    while True:
        job = next_job(conn, parent, wait_s)
        if job is None or not run(job):
            return
        wait_s = idle_s


def next_job(conn: Connection, parent: int, idle_s: float) -> TrialJob | None:
    """Wait for a job; None when told to exit, idle for ``idle_s`` or orphaned."""
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            return None
        try:
            if not conn.poll(min(PARENT_CHECK_S, max(0.0, deadline - time.monotonic()))):
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


class StopPoll:
    """Why the running trial should stop, read from the pipe and the parent's liveness."""

    def __init__(self, conn: Connection, parent: int) -> None:
        self.conn, self.parent = conn, parent
        self.exit = False
        self.reason: str | None = None  # once told, it stays told

    def __call__(self) -> str | None:
        if self.conn.poll():
            msg = self.conn.recv()
            if msg in ("stop", "exit"):
                self.exit = self.exit or msg == "exit"
                return "stopped"
        if os.getppid() != self.parent:
            return "parent died"
        return None

    def stopped(self) -> str | None:
        """Why to stop, remembered across calls (a retry on another node must not forget)."""
        if self.reason is None:
            self.reason = self()
        return self.reason


def _run_job(job: TrialJob, conn: Connection, parent: int, meters: Meters, fresh: bool) -> bool:
    """Run one trial; every path sends exactly one final message. False: exit afterwards."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    poll = StopPoll(conn, parent)
    try:
        run = execute_trial(job, meters, fresh, lambda p: conn.send(("progress", job.key, p)), poll)
        # idle again before the parent hears of it: a parent that exits right away
        # terminates its daemonic children, and an ignored SIGTERM would be lost
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        where = {"node": f"local:{socket.gethostname()}", "host_pid": os.getpid()}
        conn.send(("done", run.result, run.reading, run.note, run.stop_reason, run.startup, where))
    except BaseException as exc:  # report everything; the parent decides what it means
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))
        return False  # a failed trial may leave the process in a bad state: start afresh
    return not poll.exit and run.stop_reason != "parent died"
