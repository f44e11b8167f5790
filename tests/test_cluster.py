"""Trials in worker processes: a crashing trial fails that trial, never the caller."""

from __future__ import annotations

import json
import threading
import time
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


def test_trial_runs_and_reports_energy(tmp_path: Path, text_files: tuple) -> None:
    seen = []
    out = LocalProcessCluster().run(job(tmp_path, text_files), on_progress=seen.append)
    assert out.status == "ok", out.error
    assert out.result is not None and out.result.tokens <= 20_000
    assert out.energy is not None and out.energy.method == "estimated"
    assert out.energy.joules == pytest.approx(out.energy.cpu_seconds * 10.0)
    assert Path(out.result.artefact_path).exists() and seen


@pytest.mark.parametrize(
    "workload,expect",
    [
        ("crashy_workloads:HardCrash", "exit code 7"),
        ("crashy_workloads:Raises", "CUDA out of memory"),
        ("no_such_module:Thing", "invalid workload spec"),
    ],
)
def test_crashing_trial_fails_only_itself(
    tmp_path: Path, text_files: tuple, workload: str, expect: str
) -> None:
    out = LocalProcessCluster().run(job(tmp_path, text_files, workload))
    assert out.status == "failed" and expect in out.error


def test_nan_loss_is_a_failed_trial(tmp_path: Path, text_files: tuple) -> None:
    out = LocalProcessCluster().run(job(tmp_path, text_files, lr=1e4, warmup_steps=0))
    assert out.status == "failed" and "NaN" in out.error
    assert out.result is not None and out.result.artefact_path == ""


def test_stop_request_interrupts(tmp_path: Path, text_files: tuple) -> None:
    stop = threading.Event()
    threading.Timer(2.5, stop.set).start()
    started = time.monotonic()
    out = LocalProcessCluster().run(
        job(tmp_path, text_files, max_tokens=50_000_000), should_stop=stop.is_set
    )
    assert out.status == "interrupted"
    assert time.monotonic() - started < 15


def test_energy_share_stops_a_trial(tmp_path: Path, text_files: tuple) -> None:
    j = job(tmp_path, text_files, max_tokens=50_000_000)
    j = TrialJob(
        key=j.key, workload=j.workload, request=j.request, watts_per_core=10.0, max_joules=15.0
    )
    out = LocalProcessCluster().run(j)
    assert out.status == "ok", out.error
    assert out.result is not None and out.result.stopped_reason == "stopped"
    assert out.stop_reason == "energy share spent"
    assert out.energy is not None and 15.0 <= out.energy.joules < 15.0 + 2 * 10.0 * 1.5
