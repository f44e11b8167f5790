"""LocalProcessCluster beyond the cluster contract (tests/test_cluster_contract.py): failure
messages, NaN, energy shares, and how workers are reused, retired and reaped."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crashy_workloads import params

from adapters.cluster import LocalProcessCluster, TrialJob
from adapters.workload.protocol import TrainRequest


@pytest.fixture
def text_files(tmp_path: Path) -> tuple[list[str], list[str]]:
    src = Path(json.__file__).parent
    train = [str(p) for p in sorted(src.glob("*.py"))[:3]]
    valid = [str(sorted(src.glob("*.py"))[3])]
    return train, valid


@pytest.fixture
def cluster() -> Iterator[LocalProcessCluster]:
    """A cluster whose waiting worker is retired after the test (it would idle for minutes)."""
    c = LocalProcessCluster()
    yield c
    c.close()


def job(
    tmp_path: Path,
    files: tuple[list[str], list[str]],
    workload: str = "bytelm",
    max_tokens: int = 20_000,
    **kw: object,
) -> TrialJob:
    return TrialJob(
        key="t",
        workload=workload,
        request=TrainRequest(
            params=params(**kw),
            train_files=files[0],
            valid_files=files[1],
            max_tokens=max_tokens,
            out_path=str(tmp_path / "m.pt"),
            threads=1,
        ),
        watts_per_core=10.0,
    )


@pytest.mark.parametrize(
    "workload,expect",
    [
        ("crashy_workloads:HardCrash", "exit code 7"),
        ("crashy_workloads:Raises", "CUDA out of memory"),
        ("no_such_module:Thing", "invalid workload spec"),
    ],
)
def test_crashing_trial_fails_only_itself(
    cluster: LocalProcessCluster, tmp_path: Path, text_files: tuple, workload: str, expect: str
) -> None:
    out = cluster.run(job(tmp_path, text_files, workload))
    assert out.status == "failed" and expect in out.error


def test_nan_loss_is_a_failed_trial(
    cluster: LocalProcessCluster, tmp_path: Path, text_files: tuple
) -> None:
    out = cluster.run(job(tmp_path, text_files, lr=1e4, warmup_steps=0))
    assert out.status == "failed" and "NaN" in out.error
    assert out.result is not None and out.result.artefact_path == ""


def test_energy_share_stops_a_trial(
    cluster: LocalProcessCluster, tmp_path: Path, text_files: tuple
) -> None:
    j = job(tmp_path, text_files, max_tokens=50_000_000)
    j = TrialJob(
        key=j.key, workload=j.workload, request=j.request, watts_per_core=10.0, max_joules=15.0
    )
    out = cluster.run(j)
    assert out.status == "ok", out.error
    assert out.result is not None and out.result.stopped_reason == "stopped"
    assert out.stop_reason == "energy share spent"
    assert out.energy is not None and 15.0 <= out.energy.joules < 15.0 + 2 * 10.0 * 1.5


# --- reused workers ------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    """True once the process has exited (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state


def test_a_worker_serves_the_next_trial_and_books_its_start_up_once(
    tmp_path: Path, text_files: tuple
) -> None:
    cluster = LocalProcessCluster()
    try:  # with dropout: it draws from torch's global generator, which a reused worker keeps
        first = cluster.run(job(tmp_path, text_files, dropout=0.1))
        second = cluster.run(job(tmp_path, text_files, dropout=0.1))
    finally:
        cluster.close()
    assert first.status == second.status == "ok", (first.error, second.error)
    assert first.worker_pid == second.worker_pid is not None
    assert (first.worker_trial, second.worker_trial) == (1, 2)
    # the start-up (torch import) is measured once, apart from the first trial's own reading
    assert first.startup_energy is not None and second.startup_energy is None
    assert first.startup_energy.cpu_seconds > 0.3
    assert first.startup_energy.method == first.energy.method == "estimated"  # type: ignore[union-attr]
    # the same seeded trial gives the same result in a fresh and in a reused process
    assert first.result is not None and second.result is not None
    assert first.result.valid_bpb == second.result.valid_bpb
    assert _gone(first.worker_pid)  # close() retired it


def test_reuse_off_starts_a_worker_per_trial(tmp_path: Path, text_files: tuple) -> None:
    cluster = LocalProcessCluster(reuse_workers=False)
    first = cluster.run(job(tmp_path, text_files))
    second = cluster.run(job(tmp_path, text_files))
    assert first.status == second.status == "ok"
    assert first.worker_pid != second.worker_pid
    assert first.worker_trial == second.worker_trial == 1
    assert cluster.worker_pid is None and _gone(first.worker_pid)  # type: ignore[arg-type]


def test_a_failed_trial_never_hands_its_worker_on(tmp_path: Path, text_files: tuple) -> None:
    cluster = LocalProcessCluster()
    try:
        outs = [
            cluster.run(job(tmp_path, text_files, workload))
            for workload in (
                "bytelm",
                "crashy_workloads:HardCrash",  # dies: no exception, no goodbye
                "bytelm",
                "crashy_workloads:Raises",  # raises: alive, but its state is suspect
                "bytelm",
            )
        ]
    finally:
        cluster.close()
    assert [o.status for o in outs] == ["ok", "failed", "ok", "failed", "ok"]
    for before, bad, after in ((outs[0], outs[1], outs[2]), (outs[2], outs[3], outs[4])):
        assert bad.worker_pid == before.worker_pid  # it failed in the reused worker...
        assert after.worker_pid != bad.worker_pid and after.worker_trial == 1  # ...not reused


def test_workers_retire_after_max_trials(tmp_path: Path, text_files: tuple) -> None:
    cluster = LocalProcessCluster(max_trials_per_worker=2)
    try:
        pids = [cluster.run(job(tmp_path, text_files)).worker_pid for _ in range(3)]
    finally:
        cluster.close()
    assert pids[0] == pids[1] != pids[2]


def test_an_idle_worker_exits_by_itself(tmp_path: Path, text_files: tuple) -> None:
    cluster = LocalProcessCluster(worker_idle_s=0.5)
    try:
        first = cluster.run(job(tmp_path, text_files))
        assert cluster.worker_pid == first.worker_pid
        deadline = time.monotonic() + 10
        while cluster.worker_pid is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cluster.worker_pid is None
        second = cluster.run(job(tmp_path, text_files))
    finally:
        cluster.close()
    assert second.status == "ok" and second.worker_pid != first.worker_pid


def test_a_stopped_trial_leaves_its_worker_ready(tmp_path: Path, text_files: tuple) -> None:
    """The stop request may arrive after the trial ended; the next trial must not see it."""
    cluster = LocalProcessCluster()
    stop = threading.Event()
    threading.Timer(2.5, stop.set).start()
    try:
        stopped = cluster.run(
            job(tmp_path, text_files, max_tokens=50_000_000), should_stop=stop.is_set
        )
        with contextlib.suppress(OSError):
            cluster._idle[-1].conn.send("stop")  # a late, stale one
        after = cluster.run(job(tmp_path, text_files))
    finally:
        cluster.close()
    assert stopped.status == "interrupted"
    assert after.status == "ok" and after.worker_pid == stopped.worker_pid
    assert after.result is not None and after.result.stopped_reason == "budget"


def _trial_in_a_script(tmp_path: Path, files: tuple, ending: str = "") -> tuple[str, int]:
    """Run one trial from a separate Python script that then ends with ``ending``; return
    the trial's status and the pid of the worker its cluster kept. A script that does not
    exit within 60 s fails the test."""
    train, valid = files
    code = f"""
import os, sys
sys.path[:0] = {sys.path!r}
from adapters.cluster import LocalProcessCluster, TrialJob
from adapters.workload.protocol import TrainRequest
from crashy_workloads import params
cluster = LocalProcessCluster()
out = cluster.run(TrialJob(key="t", workload="bytelm", request=TrainRequest(
    params=params(), train_files={train!r}, valid_files={valid!r}, max_tokens=5_000,
    out_path={str(tmp_path / "m.pt")!r}, threads=1)))
print(out.status, cluster.worker_pid, flush=True)
{ending}
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    status, pid = res.stdout.split()
    assert pid != "None", res.stderr
    return status, int(pid)


def test_an_orphaned_idle_worker_exits(tmp_path: Path, text_files: tuple) -> None:
    """The daemon is killed with -9 between trials: its waiting worker must not linger."""
    # os._exit is like kill -9: no clean-up, the worker is left waiting for a next job
    status, pid = _trial_in_a_script(tmp_path, text_files, "os._exit(0)")
    assert status == "ok"
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(pid)


def test_an_unclosed_cluster_does_not_hold_up_exit(tmp_path: Path, text_files: tuple) -> None:
    """A script that forgets close(): its waiting worker must not keep the interpreter from
    exiting (multiprocessing terminates daemonic children at exit; an idle worker obeys).
    Before the fix the script hung for the idle limit (300 s)."""
    status, pid = _trial_in_a_script(tmp_path, text_files)
    assert status == "ok" and _gone(pid)
