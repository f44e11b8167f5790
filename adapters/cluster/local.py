"""Local cluster: trials in spawned worker processes on this machine, reused between trials.

:class:`ProcessCluster` holds what every process-backed cluster shares: a pool of idle
workers, one worker per running trial, the pipe protocol of ``adapters/cluster/worker.py``
(progress, stop, a grace period, then kill). :class:`LocalProcessCluster` trains in the
worker itself; the Ray cluster's workers are driver processes that train on a Ray actor.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import socket
import threading
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


class ProcessCluster:
    """Runs each trial in a `spawn`ed process (no inherited threads, locks or CUDA state).

    With ``reuse_workers`` a worker that finished a trial cleanly takes a later one: it keeps
    its interpreter, torch and CUDA context, which on a GPU cost several times a small
    trial's energy (bench/trial_overhead.py). A worker whose trial crashed, raised or had to
    be killed is never reused; one that served ``max_trials_per_worker`` trials is retired
    (memory a workload leaks cannot pile up), one idle for ``worker_idle_s`` is not used
    again, and exits by itself shortly after. Thread-safe: parallel trials each check out a
    worker of their own (the pool keeps as many idle workers as trials ran at once).
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
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._running: dict[str, str] = {}  # trial key -> where it runs
        self.reuse_workers = reuse_workers
        self.worker_idle_s = worker_idle_s
        self.max_trials_per_worker = max_trials_per_worker

    # what a subclass says ---------------------------------------------------------------

    def _target(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        """The worker's entry point and its arguments after (conn, idle_s)."""
        return worker_main, ()

    def _where_before_placed(self) -> str:
        """Where a trial is said to run until its worker says where it was placed."""
        return f"local:{socket.gethostname()}"

    # the pool ---------------------------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        """A waiting worker's pid, if one is kept for the next trial."""
        pids = self.worker_pids
        return pids[0] if pids else None

    @property
    def worker_pids(self) -> list[int]:
        """The waiting workers' pids, the next to be used first."""
        with self._lock:
            return [w.proc.pid for w in reversed(self._idle) if w.proc.is_alive()]

    def close(self) -> None:
        """Retire the waiting workers (the daemon calls this on exit)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            _retire(w)

    def _checkout(self) -> _Worker:
        stale: list[_Worker] = []
        found = None
        with self._lock:
            while self._idle:
                w = self._idle.pop()  # the most recently used: the warmest
                fresh = time.monotonic() - w.idle_since < self.worker_idle_s
                if w.proc.is_alive() and fresh:
                    found = w
                    break
                stale.append(w)  # idle too long (it is exiting, or about to): reap it
        for w in stale:
            _retire(w)
        return found if found is not None else self._spawn()

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe()
        idle_s = self.worker_idle_s + _idle_margin_s(self.worker_idle_s)
        target, extra = self._target()
        proc = self._ctx.Process(
            target=target,
            args=(child_conn, idle_s if self.reuse_workers else 0.0, *extra),
            name="trial-worker",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn)

    def _checkin(self, w: _Worker, reusable: bool) -> None:
        keep = (
            reusable
            and self.reuse_workers
            and w.trials < self.max_trials_per_worker
            and w.proc.is_alive()
        )
        if keep:
            w.idle_since = time.monotonic()
            with self._lock:
                self._idle.append(w)
        else:
            _retire(w)

    # one trial --------------------------------------------------------------------------

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
            w = self._spawn()
            w.trials += 1
            try:
                w.conn.send(("job", job))
            except BaseException:  # nothing reached the worker: do not leave it behind
                _retire(w)
                raise
        except BaseException:  # e.g. a job that cannot be pickled
            _retire(w)
            raise
        with self._lock:
            self._running[job.key] = self._where_before_placed()
        try:
            outcome, reusable = self._follow(w, job, on_progress, should_stop)
            return outcome
        finally:
            with self._lock:
                self._running.pop(job.key, None)
            self._checkin(w, reusable)

    def _placed(self, key: str, msg: tuple[Any, ...]) -> None:
        """A worker said where the trial runs: ``("placed", key, where, ...)``."""
        with self._lock:
            if key in self._running:
                self._running[key] = str(msg[2])

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
            if msg[0] == "progress":
                if on_progress is not None and msg[1] == job.key:  # never a late one
                    on_progress(msg[2])
            elif msg[0] == "placed":
                self._placed(job.key, msg)
            elif msg[0] == "done":
                return _done(msg, stopping(), outcome)
            elif msg[0] == "error":
                return _error(msg, proc, stopping(), outcome), False
        proc.join(5)
        if stopping():
            return outcome("interrupted", error="stopped", exit_code=proc.exitcode), False
        return outcome(
            "failed",
            error=f"worker process died without a result (exit code {proc.exitcode})",
            exit_code=proc.exitcode,
        ), False

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"running": dict(self._running), "idle_workers": len(self._idle)}


def _error(
    msg: tuple[Any, ...], proc: Any, stopping: bool, outcome: Callable[..., TrialOutcome]
) -> TrialOutcome:
    """The outcome of a worker's ``error`` message (the worker exits after sending it)."""
    proc.join(5)
    status = "interrupted" if stopping else "failed"  # stopped by a signal?
    lost = tuple(msg[2]) if len(msg) > 2 else ()
    return outcome(status, error=msg[1], exit_code=proc.exitcode, lost=lost)


def _done(
    msg: tuple[Any, ...], stopping: bool, outcome: Callable[..., TrialOutcome]
) -> tuple[TrialOutcome, bool]:
    """The outcome a worker's ``done`` message means; True: the worker may be reused."""
    _, result, reading, note, stop_reason, startup, where = msg
    keep = stop_reason != "parent died"
    kw = {
        "energy_note": note,
        "startup_energy": startup,
        "node": where.get("node", ""),
        "lost": tuple(where.get("lost", ())),
    }
    if stopping or stop_reason in ("stopped", "parent died"):
        return outcome("interrupted", result, reading, "stopped", **kw), keep
    if result.stopped_reason == "nan" or not result.artefact_path:
        return outcome("failed", result, reading, "training diverged (NaN loss)", **kw), keep
    return outcome("ok", result, reading, stop_reason=stop_reason or "", **kw), keep


class LocalProcessCluster(ProcessCluster):
    """Trials in worker processes on this machine."""

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
        """Apply an edited ``cluster`` section; waiting workers started under other settings
        are retired. False (nothing changed) for a section of another kind."""
        if spec.kind != "local":
            return False
        new = (spec.reuse_workers, spec.worker_idle_s, spec.max_trials_per_worker)
        if new != (self.reuse_workers, self.worker_idle_s, self.max_trials_per_worker):
            self.close()
        self.reuse_workers, self.worker_idle_s, self.max_trials_per_worker = new
        return True

    def status(self) -> dict[str, Any]:
        return {
            "kind": "local",
            "nodes": [{"node": f"local:{socket.gethostname()}", "alive": True}],
            **super().status(),
        }


def _retire(w: _Worker) -> None:
    """Ask a worker to exit, and make sure it has."""
    with contextlib.suppress(OSError):
        w.conn.send("exit")
    w.proc.join(2)
    if w.proc.is_alive():
        w.proc.kill()
        w.proc.join(2)
    w.conn.close()
