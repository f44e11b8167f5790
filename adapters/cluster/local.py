"""Local cluster: one spawned worker process per trial on this machine."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable

from adapters.cluster.base import TrialJob, TrialOutcome
from adapters.cluster.worker import worker_main
from adapters.workload.protocol import TrainProgress


class LocalProcessCluster:
    """Runs trials in `spawn`ed processes (no inherited threads, locks or CUDA state)."""

    def __init__(self, stop_grace_s: float = 5.0) -> None:
        self.stop_grace_s = stop_grace_s
        self.description = "local worker processes"
        self._ctx = mp.get_context("spawn")

    def run(
        self,
        job: TrialJob,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrialOutcome:
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=worker_main, args=(job, child_conn), name=f"trial-{job.key}", daemon=True
        )
        proc.start()
        child_conn.close()
        stop_sent_at: float | None = None

        def stopping() -> bool:
            return stop_sent_at is not None or (should_stop is not None and should_stop())

        try:
            while True:
                if stop_sent_at is None and should_stop is not None and should_stop():
                    stop_sent_at = time.monotonic()
                    with contextlib.suppress(OSError):
                        parent_conn.send("stop")
                if stop_sent_at is not None and time.monotonic() - stop_sent_at > self.stop_grace_s:
                    proc.kill()
                    proc.join(2)
                    return TrialOutcome("interrupted", error="stopped: worker killed after grace")
                try:
                    ready = parent_conn.poll(0.2) or (
                        not proc.is_alive() and parent_conn.poll(0)  # result raced the exit
                    )
                    msg = parent_conn.recv() if ready else None
                except (EOFError, OSError):
                    break  # the worker is gone (crash, signal)
                if msg is None:
                    if not proc.is_alive():
                        break
                    continue
                kind = msg[0]
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(msg[1])
                elif kind == "done":
                    _, result, reading, note, stop_reason = msg
                    if stopping() or stop_reason in ("stopped", "parent died"):
                        return TrialOutcome(
                            "interrupted", result, reading, "stopped", energy_note=note
                        )
                    if result.stopped_reason == "nan" or not result.artefact_path:
                        return TrialOutcome(
                            "failed",
                            result,
                            reading,
                            "training diverged (NaN loss)",
                            energy_note=note,
                        )
                    return TrialOutcome(
                        "ok", result, reading, energy_note=note, stop_reason=stop_reason or ""
                    )
                elif kind == "error":
                    proc.join(5)
                    if stopping():  # e.g. the signal reached the worker before we could ask
                        return TrialOutcome("interrupted", error=msg[1], exit_code=proc.exitcode)
                    return TrialOutcome("failed", error=msg[1], exit_code=proc.exitcode)
            proc.join(5)
            if stopping():
                return TrialOutcome("interrupted", error="stopped", exit_code=proc.exitcode)
            return TrialOutcome(
                "failed",
                error=f"worker process died without a result (exit code {proc.exitcode})",
                exit_code=proc.exitcode,
            )
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(2)
            parent_conn.close()
