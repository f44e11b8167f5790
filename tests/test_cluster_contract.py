"""One contract for every cluster (adapters/cluster/base.py): LocalProcessCluster, the
same inside a SlottedCluster over a one-slot pool shared with nobody, and RayCluster on a
loopback Ray cluster (its worker is the driver process; the trial runs in a Ray actor).

Tiny real trials in real worker processes: a good one returns ok with its energy, a crash
fails that trial only, ``should_stop`` interrupts a running trial, ``close`` frees the
worker. A trial is stopped from its first progress report, so no test guesses a moment.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crashy_workloads import params

from adapters.cluster import Cluster, LocalProcessCluster, SlotPool, SlottedCluster, TrialJob
from adapters.cluster.ray import RayCluster
from adapters.workload.protocol import TrainRequest
from policies.model import RayClusterPolicy

WATTS_PER_CORE = 10.0


@dataclass
class Under:
    cluster: Cluster
    pool: SlotPool | None  # the slotted one's pool: free again after every trial

    def slot_free(self) -> bool:
        return self.pool is None or (self.pool.in_use == 0 and self.pool.holders() == [])


@pytest.fixture(params=["local", "slotted", "ray"])
def under(request: pytest.FixtureRequest) -> Iterator[Under]:
    if request.param == "ray":  # on the loopback cluster; the tests' own workloads travel
        ray = request.getfixturevalue("ray_cluster")
        spec = RayClusterPolicy(
            kind="ray",
            address=ray.address,
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
        )
        inner: Cluster = RayCluster(spec)
    else:
        inner = LocalProcessCluster()
    pool = SlotPool(1) if request.param == "slotted" else None
    cluster: Cluster = inner if pool is None else SlottedCluster(inner, pool, "line-a")
    yield Under(cluster, pool)
    cluster.close()


@pytest.fixture(scope="module")
def files() -> tuple[list[str], list[str]]:
    src = sorted(Path(json.__file__).parent.glob("*.py"))
    return [str(p) for p in src[:3]], [str(src[3])]


def job(tmp_path: Path, files: tuple, workload: str = "bytelm", tokens: int = 5_000) -> TrialJob:
    request = TrainRequest(
        params=params(),
        train_files=files[0],
        valid_files=files[1],
        max_tokens=tokens,
        out_path=str(tmp_path / "m.pt"),
        threads=1,
    )
    return TrialJob(key="t", workload=workload, request=request, watts_per_core=WATTS_PER_CORE)


def _gone(pid: int) -> bool:
    """True once the process has exited (a zombie nobody reaped counts as gone)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_good_trial_is_ok_with_its_energy_and_close_frees_the_worker(
    under: Under, tmp_path: Path, files: tuple
) -> None:
    out = under.cluster.run(job(tmp_path, files))
    assert out.status == "ok", out.error
    assert out.result is not None and 0 < out.result.tokens <= 5_000
    assert Path(out.result.artefact_path).exists()
    assert out.energy is not None and out.energy.method == "estimated"
    assert out.energy.joules == pytest.approx(out.energy.cpu_seconds * WATTS_PER_CORE)
    assert out.worker_pid is not None and under.slot_free()
    assert not _gone(out.worker_pid)  # kept warm for the next trial ...
    under.cluster.close()
    assert _gone(out.worker_pid)  # ... until closed


def test_a_crashing_trial_fails_only_itself(under: Under, tmp_path: Path, files: tuple) -> None:
    crashed = under.cluster.run(job(tmp_path, files, "crashy_workloads:HardCrash"))
    assert crashed.status == "failed" and crashed.error and under.slot_free()
    after = under.cluster.run(job(tmp_path, files))
    assert after.status == "ok", after.error
    assert after.worker_pid != crashed.worker_pid and under.slot_free()


def test_should_stop_interrupts_a_running_trial(under: Under, tmp_path: Path, files: tuple) -> None:
    running = threading.Event()  # set by the trial's first progress report (relayed)
    out = under.cluster.run(
        job(tmp_path, files, tokens=50_000_000),
        on_progress=lambda _p: running.set(),
        should_stop=running.is_set,
    )
    assert running.is_set() and out.status == "interrupted"
    assert out.result is None or out.result.tokens < 50_000_000
    assert under.slot_free()
