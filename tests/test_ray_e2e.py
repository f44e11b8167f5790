"""Trials on a real Ray cluster on loopback (`cluster: {kind: ray, address: ...}`), through
the real daemon: placement on both nodes, a node lost mid-trial, kill -9 with trials in
flight (no duplicate, no orphaned actor)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import LoopbackRay
from sqlmodel import select
from test_e2e import cli, daemon, open_store, policy_file, wait_for

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.store.tables import AuditEventRow, LedgerRow, ModelVersionRow, TrialRunRow

pytestmark = pytest.mark.slow

TRIALS_2 = "trials_per_cycle: 2"


def ray_policy(tmp_path: Path, address: str, extra: str = "", **replace: str) -> Path:
    section = f"cluster:\n  kind: ray\n  address: '{address}'\n{extra}"
    return policy_file(
        tmp_path,
        **{"gates:": f"{section}gates:", TRIALS_2: "trials_per_cycle: 2\n  parallel_trials: 2"}
        | replace,
    )


def rows(store: Store, table: Any) -> list[Any]:
    with store.session() as s:
        return list(s.exec(select(table)).all())


def test_a_cycle_runs_its_trials_on_both_nodes(tmp_path: Path, ray_cluster: LoopbackRay) -> None:
    """Two trials at once, one CPU each, on a cluster of two one-CPU nodes: one per node;
    artefacts back through the object store and verified; energy booked per node."""
    state = tmp_path / "state"
    pol = ray_policy(tmp_path, ray_cluster.address)
    res = cli("run", "--policy", str(pol), "--state-dir", str(state), "--once", "--no-serve")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = open_store(f"sqlite:///{state / 'aifactory.db'}")
    trials = rows(store, TrialRunRow)
    assert [t.status for t in trials] == ["complete", "complete"]
    nodes = {json.loads(t.result)["node"] for t in trials}
    assert len(nodes) == 2 and all(n.startswith("ray:") for n in nodes), nodes
    ledger = [r for r in rows(store, LedgerRow) if r.kind == "train"]
    assert {r.node for r in ledger} == nodes and all(r.joules > 0 for r in ledger)
    assert all(r.method == "estimated" for r in ledger)  # no GPU on these nodes
    (version,) = rows(store, ModelVersionRow)  # registered from the artefact that came back
    assert Path(version.artefact_path).exists() and version.artefact_sha256
    events = AuditLog(store).events(agent="trainer")
    ran = [e for e in events if e.action == "run_trial"]
    assert {e.figures["node"] for e in ran} == nodes
    evaluated = [e for e in AuditLog(store).events(agent="evaluator")]
    assert evaluated, "the candidate loaded (its checksum verified) and was judged"
    assert cli("audit", "verify", "--db", store.url).returncode == 0
    store.dispose()


def _actor_running_on(node: Any) -> bool:
    for p in node.processes():
        try:
            if "TrialActor" in " ".join(p.cmdline()):
                return True
        except Exception:
            continue
    return False


def test_a_lost_node_runs_the_trial_again_elsewhere(
    tmp_path: Path, ray_cluster: LoopbackRay
) -> None:
    victim = ray_cluster.add_node({"pool": 1})
    state = tmp_path / "state"
    pol = ray_policy(
        tmp_path,
        ray_cluster.address,
        "  resources: {pool: 1}\n  max_retries: 1\n",
        **{"tokens_per_trial: 60000": "tokens_per_trial: 1200000"},
    )
    pol.write_text(pol.read_text().replace("parallel_trials: 2", "parallel_trials: 1"))
    pol.write_text(pol.read_text().replace("trials_per_cycle: 2", "trials_per_cycle: 1"))
    log = tmp_path / "daemon.log"
    common = ["--policy", str(pol), "--state-dir", str(state), "--no-serve"]
    with daemon(*common, "--once", log=log) as proc:
        wait_for(lambda: _actor_running_on(victim), 120, "the trial on the victim", log, proc)
        assert victim.kill_raylet() is not None
        refuge = ray_cluster.add_node({"pool": 1})  # up before Ray calls the victim dead
        assert proc.wait(300) == 0, log.read_text()[-3000:]
    store = open_store(f"sqlite:///{state / 'aifactory.db'}")
    (trial,) = rows(store, TrialRunRow)
    result = json.loads(trial.result)
    assert trial.status == "complete", trial.error
    assert result["lost_attempts"] and "lost" in result["lost_attempts"][0]
    retried = [e for e in AuditLog(store).events(agent="trainer") if e.action == "retry_trial"]
    assert len(retried) == 1 and retried[0].figures["ran_on"] == result["node"]
    assert CycleBook(store).get("tiny-c0001").status == "completed"  # type: ignore[union-attr]
    victim.stop()
    refuge.stop()
    store.dispose()


def test_kill9_with_ray_trials_in_flight_leaves_no_duplicate_and_no_orphan(
    tmp_path: Path, ray_cluster: LoopbackRay
) -> None:
    state = tmp_path / "state"
    pol = ray_policy(
        tmp_path, ray_cluster.address, **{"tokens_per_trial: 60000": "tokens_per_trial: 1500000"}
    )
    url = f"sqlite:///{state / 'aifactory.db'}"
    common = ["--policy", str(pol), "--state-dir", str(state), "--no-serve"]
    log = tmp_path / "first.log"
    with daemon(*common, "--cycles", "1", log=log) as proc:
        wait_for(lambda: (state / "aifactory.db").exists(), 60, "database", log, proc)
        store = open_store(url)

        def both_training() -> bool:
            trials = rows(store, TrialRunRow)
            return len(trials) == 2 and len(ray_cluster.alive_actors()) == 2

        wait_for(both_training, 180, "two trials on Ray", log, proc)

        def status_shows_both() -> dict[str, Any] | None:
            res = cli("status", "--db", url, "--line", "tiny", "--json")
            view = json.loads(res.stdout)["daemon"]["cluster"] if res.returncode == 0 else {}
            running = view.get("running", {})
            placed = [w for w in running.values() if w.startswith("ray:")]
            return view if len(placed) == 2 and len(view.get("nodes", [])) >= 2 else None

        view = wait_for(status_shows_both, 60, "status to show the trials on Ray", log, proc)
        assert view["kind"] == "ray" and len(set(view["running"].values())) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 60  # the drivers notice, exit, and Ray ends their actors
    while ray_cluster.alive_actors() and time.monotonic() < deadline:
        time.sleep(1)
    assert ray_cluster.alive_actors() == []
    log2 = tmp_path / "second.log"
    with daemon(*common, "--cycles", "1", log=log2) as proc2:
        assert proc2.wait(300) == 0, log2.read_text()[-3000:]
    assert "resuming cycle tiny-c0001" in log2.read_text()
    trials = rows(store, TrialRunRow)
    assert [t.status for t in trials] == ["complete", "complete"]
    assert len(rows(store, ModelVersionRow)) == 1
    booked = sorted(r.key for r in rows(store, LedgerRow) if r.kind == "train")
    assert len(booked) == len(set(booked)) == 4, booked  # two trials, two start-ups
    keys = [e.idem_key for e in rows(store, AuditEventRow) if e.idem_key]
    assert len(keys) == len(set(keys))
    study = optuna.load_study(study_name="aifactory-tiny", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert ray_cluster.alive_actors() == []  # the second daemon closed its drivers
    assert cli("audit", "verify", "--db", url).returncode == 0
    store.dispose()


def test_the_daemon_outlives_a_restart_of_the_ray_head(tmp_path: Path) -> None:
    """A cluster of its own (one head): the head is stopped mid-trial and started again on
    the same port. The trial then running fails; the daemon carries on, the next trial
    runs on the new head, and the gap is audited."""
    import tempfile

    from adapters.cluster.ray_nodes import LOOPBACK_STORE_BYTES, free_port, start_head

    port = free_port()
    temp = tempfile.mkdtemp(prefix="afr-", dir="/tmp")
    head = start_head(port, 1, None, LOOPBACK_STORE_BYTES, temp)
    state = tmp_path / "state"
    pol = ray_policy(
        tmp_path,
        f"127.0.0.1:{port}",
        "  max_retries: 0\n",
        **{"tokens_per_trial: 60000": "tokens_per_trial: 600000"},
    )
    pol.write_text(pol.read_text().replace("parallel_trials: 2", "parallel_trials: 1"))
    log = tmp_path / "daemon.log"
    try:
        with daemon(
            "--policy", str(pol), "--state-dir", str(state), "--no-serve", "--once", log=log
        ) as proc:
            wait_for(lambda: _actor_running_on(head), 120, "the first trial", log, proc)
            head.stop()
            head = start_head(port, 1, None, LOOPBACK_STORE_BYTES, temp)
            assert proc.wait(300) == 0, log.read_text()[-3000:]
    finally:
        head.stop()
    store = open_store(f"sqlite:///{state / 'aifactory.db'}")
    trials = rows(store, TrialRunRow)
    assert [t.status for t in trials] == ["failed", "complete"], [
        (t.status, t.error[:200]) for t in trials
    ]
    back = [e for e in AuditLog(store).events(agent="trainer") if e.action == "cluster_reconnected"]
    assert len(back) == 1 and back[0].figures["gap_s"] > 0
    assert CycleBook(store).get("tiny-c0001").status == "completed"  # type: ignore[union-attr]
    store.dispose()
