"""The trial worker: runs in its own process so a crashing trial fails only itself.

It trains through the workload protocol, brackets the run with an energy meter, streams
progress to the parent and stops when asked, when its energy share is spent, or when
the parent process has died (no orphans burning CPU after a `kill -9`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from adapters.cluster.base import TrialJob


def worker_main(job: TrialJob, conn: Connection) -> None:
    """Entry point of the worker process; every exit path sends exactly one final message."""
    # Signals are the daemon's business: it asks us to stop through the pipe. A terminal's
    # Ctrl-C or a service manager's SIGTERM to the whole group must not kill the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    try:
        import torch

        torch.set_num_threads(max(1, job.request.threads))
        from adapters.energy import probe_energy_meter
        from adapters.workload.protocol import load_workload

        wants_gpu = job.prefer_gpu and job.request.device != "cpu" and torch.cuda.is_available()
        meter, note = probe_energy_meter(prefer_gpu=wants_gpu, watts_per_core=job.watts_per_core)
        workload = load_workload(job.workload)
        window = meter.begin()
        state: dict[str, Any] = {"stop": None, "checked": 0.0}

        def should_stop() -> bool:
            if state["stop"]:
                return True
            if conn.poll():
                msg = conn.recv()
                if msg == "stop":
                    state["stop"] = "stopped"
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
    finally:
        conn.close()
