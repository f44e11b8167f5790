"""Small pieces of parallel and Ray trials, without a cluster: which GPU a trial's meter
reads, stopping only the processes that were started, stale Optuna trials."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import psutil

from adapters.cluster.base import TrialJob
from adapters.cluster.execute import _gpu_indices
from adapters.cluster.ray_nodes import stop_pids
from adapters.workload.protocol import TrainRequest


def _job(device: str, gpus: tuple[int, ...] | None = None) -> TrialJob:
    request = TrainRequest(params={}, train_files=[], valid_files=[], max_tokens=1, out_path="x")
    return TrialJob(
        "k", "bytelm", TrainRequest(**{**request.__dict__, "device": device}), gpu_indices=gpus
    )


def test_a_trial_meters_its_own_gpu_only() -> None:
    assert _gpu_indices(_job("cuda:3")) == (3,)
    assert _gpu_indices(_job("cuda")) == (0,)
    assert _gpu_indices(_job("auto")) == (0,)
    assert _gpu_indices(_job("cuda", (5, 6))) == (5, 6)  # what Ray gave the actor


def test_stop_pids_leaves_a_reused_id_alone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        born = psutil.Process(proc.pid).create_time()
        stop_pids([proc.pid], timeout_s=2, born={proc.pid: born - 100.0})  # someone else's
        assert proc.poll() is None
        stop_pids([proc.pid], timeout_s=5, born={proc.pid: born})  # the one we started
        assert proc.wait(5) is not None
    finally:
        if proc.poll() is None:
            proc.kill()


def test_running_trials_of_ended_cycles_are_failed(tmp_path: Path) -> None:
    """With a constant liar, a RUNNING trial left by an ended cycle would count as a bad
    result for ever; the running cycle's own trials are left alone."""
    from adapters.store.cycles import CycleBook
    from adapters.store.db import Store
    from controller.nodes.study import fail_orphans

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    book = CycleBook(store)
    ended = book.start("line", "v1", "test").id
    book.finish(ended, "completed", {})
    running = book.start("line", "v1", "test").id
    study = optuna.create_study(storage=store.url, study_name="s")
    old, mine = study.ask(), study.ask()
    old.set_user_attr("cycle", ended)
    mine.set_user_attr("cycle", running)
    fail_orphans(study, book, running)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {old.number: "FAIL", mine.number: "RUNNING"}
    store.dispose()
