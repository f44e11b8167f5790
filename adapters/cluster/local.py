"""Local cluster: trials in spawned worker processes on this machine, reused between trials."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from adapters.cluster.base import TrialJob, TrialOutcome
from adapters.cluster.worker import worker_main
from adapters.workload.protocol import TrainProgress

if TYPE_CHECKING:  # pydantic stays out of the workers' start-up
    from policies.model import ClusterPolicy, LocalClusterPolicy


@dataclass
class _Worker:
    proc: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    trials: int = 0
    idle_since: float = 0.0


def _idle_margin_s(idle_s: float) -> float:
    """How long past ``idle_s`` a worker waits before exiting by itself. The parent retires
    a worker idle for ``idle_s``, so it never sends a job to one that is just exiting."""
    return min(10.0, idle_s)


class LocalProcessCluster:
    """Runs trials in `spawn`ed processes (no inherited threads, locks or CUDA state).

    With ``reuse_workers`` a worker that finished a trial cleanly takes the next one: it
    keeps its interpreter, torch and CUDA context, which on a GPU cost several times a small
    trial's energy (bench/trial_overhead.py). A worker whose trial crashed, raised or had to
    be killed is never reused; one that served ``max_trials_per_worker`` trials is retired
    (memory a workload leaks cannot pile up), one idle for ``worker_idle_s`` is not used
    again, and exits by itself shortly after. Calls come from one thread at a time (the
    daemon's main thread).
    """

    def __init__(
        self,
        stop_grace_s: float = 5.0,
        reuse_workers: bool = True,
        worker_idle_s: float = 300.0,
        max_trials_per_worker: int = 50,
    ) -> None:
        self.stop_grace_s = stop_grace_s
        self._ctx = mp.get_context("spawn")
        self._worker: _Worker | None = None
        self.reuse_workers = reuse_workers
        self.worker_idle_s = worker_idle_s
        self.max_trials_per_worker = max_trials_per_worker

    @classmethod
    def from_spec(cls, spec: LocalClusterPolicy) -> LocalProcessCluster:
        """The cluster a policy's ``cluster`` section (``kind: local``) asks for."""
        return cls(
            reuse_workers=spec.reuse_workers,
            worker_idle_s=spec.worker_idle_s,
            max_trials_per_worker=spec.max_trials_per_worker,
        )

    @property
    def description(self) -> str:
        how = "reused" if self.reuse_workers else "one per trial"
        return f"local worker processes, {how}"

    def configure(self, spec: ClusterPolicy) -> bool:
        """Apply an edited ``cluster`` section; a waiting worker started under other settings
        is retired. False (nothing changed) for a section of another kind."""
        if spec.kind != "local":
            return False
        new = (spec.reuse_workers, spec.worker_idle_s, spec.max_trials_per_worker)
        if new != (self.reuse_workers, self.worker_idle_s, self.max_trials_per_worker):
            self.close()
        self.reuse_workers, self.worker_idle_s, self.max_trials_per_worker = new
        return True

    @property
    def worker_pid(self) -> int | None:
        """The waiting worker's pid, if one is kept for the next trial."""
        w = self._worker
        return w.proc.pid if w is not None and w.proc.is_alive() else None

    def close(self) -> None:
        """Retire the waiting worker (the daemon calls this on exit)."""
        w, self._worker = self._worker, None
        if w is not None:
            _retire(w)

    def _checkout(self) -> _Worker:
        w, self._worker = self._worker, None
        if (
            w is not None
            and w.proc.is_alive()
            and time.monotonic() - w.idle_since < self.worker_idle_s
        ):
            return w
        if w is not None:
            _retire(w)  # idle too long (it is exiting, or about to): reap it
        parent_conn, child_conn = self._ctx.Pipe()
        idle_s = self.worker_idle_s + _idle_margin_s(self.worker_idle_s)
        proc = self._ctx.Process(
            target=worker_main,
            args=(child_conn, idle_s if self.reuse_workers else 0.0),
            name="trial-worker",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn)

    def run(
        self,
        job: TrialJob,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrialOutcome:
        w = self._checkout()
        w.trials += 1
        reusable = False
        try:
            w.conn.send(("job", job))
        except OSError:  # it died between the liveness check and the send
            _retire(w)
            w = self._checkout()
            w.trials += 1
            w.conn.send(("job", job))
        try:
            outcome, reusable = self._follow(w, job, on_progress, should_stop)
            return outcome
        finally:
            if (
                reusable
                and self.reuse_workers
                and w.trials < self.max_trials_per_worker
                and w.proc.is_alive()
            ):
                w.idle_since = time.monotonic()
                self._worker = w
            else:
                _retire(w)

    def _follow(
        self,
        w: _Worker,
        job: TrialJob,
        on_progress: Callable[[TrainProgress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[TrialOutcome, bool]:
        """Relay the worker's messages until the trial ends; True: the worker may be reused."""
        proc, conn, pid = w.proc, w.conn, w.proc.pid
        stop_sent_at: float | None = None

        def stopping() -> bool:
            return stop_sent_at is not None or (should_stop is not None and should_stop())

        def outcome(status: Any, *args: Any, **kw: Any) -> TrialOutcome:
            return TrialOutcome(status, *args, worker_pid=pid, worker_trial=w.trials, **kw)

        while True:
            if stop_sent_at is None and should_stop is not None and should_stop():
                stop_sent_at = time.monotonic()
                with contextlib.suppress(OSError):
                    conn.send("stop")
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > self.stop_grace_s:
                return outcome("interrupted", error="stopped: worker killed after grace"), False
            try:
                ready = conn.poll(0.2) or (
                    not proc.is_alive() and conn.poll(0)  # result raced the exit
                )
                msg = conn.recv() if ready else None
            except (EOFError, OSError):
                break  # the worker is gone (crash, signal)
            if msg is None:
                if not proc.is_alive():
                    break
                continue
            kind = msg[0]
            if kind == "progress":
                if on_progress is not None and msg[1] == job.key:  # never a late one
                    on_progress(msg[2])
            elif kind == "done":
                _, result, reading, note, stop_reason, startup = msg
                keep = stop_reason != "parent died"
                kw = {"energy_note": note, "startup_energy": startup}
                if stopping() or stop_reason in ("stopped", "parent died"):
                    return outcome("interrupted", result, reading, "stopped", **kw), keep
                if result.stopped_reason == "nan" or not result.artefact_path:
                    return outcome(
                        "failed", result, reading, "training diverged (NaN loss)", **kw
                    ), keep
                return outcome("ok", result, reading, stop_reason=stop_reason or "", **kw), keep
            elif kind == "error":
                proc.join(5)  # the worker exits after reporting an error
                status = "interrupted" if stopping() else "failed"  # stopped by a signal?
                return outcome(status, error=msg[1], exit_code=proc.exitcode), False
        proc.join(5)
        if stopping():
            return outcome("interrupted", error="stopped", exit_code=proc.exitcode), False
        return outcome(
            "failed",
            error=f"worker process died without a result (exit code {proc.exitcode})",
            exit_code=proc.exitcode,
        ), False


def _retire(w: _Worker) -> None:
    """Ask a worker to exit, and make sure it has."""
    with contextlib.suppress(OSError):
        w.conn.send("exit")
    w.proc.join(2)
    if w.proc.is_alive():
        w.proc.kill()
        w.proc.join(2)
    w.conn.close()
