"""Parallel trials (`tuning.parallel_trials`) on the local cluster, through the real daemon:
trials overlap, budgets hold for trials running together, and a daemon killed with two
trials in flight resumes exactly those two."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from sqlmodel import select
from test_e2e import cli, daemon, open_store, policy_file, run_once, wait_for

from adapters.store.cycles import CycleBook
from adapters.store.tables import AuditEventRow, LedgerRow, ModelVersionRow, TrialRunRow

pytestmark = pytest.mark.slow

TRIALS_2 = "trials_per_cycle: 2"


def _windows(rows: list[TrialRunRow]) -> list[tuple[datetime, datetime]]:
    out = []
    for r in rows:
        res = json.loads(r.result)
        out.append(
            (datetime.fromisoformat(res["started_at"]), datetime.fromisoformat(res["ended_at"]))
        )
    return out


def _overlap(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_trials_at_once_complete_with_distinct_samples(tmp_path: Path) -> None:
    pol = policy_file(
        tmp_path,
        **{
            TRIALS_2: "trials_per_cycle: 4\n  parallel_trials: 2",
            "tokens_per_trial: 60000": ("tokens_per_trial: 150000"),
        },
    )
    store = run_once(tmp_path, pol)
    with store.session() as s:
        rows = s.exec(select(TrialRunRow).order_by(TrialRunRow.key)).all()
    assert [r.status for r in rows] == ["complete"] * 4
    assert len({r.optuna_number for r in rows}) == 4
    assert len({json.loads(r.params)["lr"] for r in rows}) == 4  # the liar spread them out
    windows = _windows(rows)
    assert _overlap(windows[0], windows[1]), windows  # the first two ran together
    threads = {json.loads(r.result)["worker"]["pid"] for r in rows}
    assert len(threads) >= 2  # two workers
    verify = cli("audit", "verify", "--db", store.url)
    assert verify.returncode == 0, verify.stdout
    store.dispose()


def test_concurrent_trials_never_overrun_a_budget_that_fits_one_and_a_half(
    tmp_path: Path,
) -> None:
    """A cycle's energy budget of 1.5 trials (a planning estimate that thinks more fit):
    two trials start together, and what they may spend together stays within it."""
    budget_j = 24.0
    pol = policy_file(
        tmp_path,
        **{
            "tokens_per_trial: 60000": "tokens_per_trial: 5000000\n"
            f"  energy_kwh_per_cycle: {budget_j / 3.6e6:.12f}",
            TRIALS_2: "trials_per_cycle: 2\n  parallel_trials: 2",
            "gates:": "energy:\n  prior_joules_per_token: 0.000001\ngates:",
        },
    )
    store = run_once(tmp_path, pol)
    with store.session() as s:
        rows = s.exec(select(TrialRunRow).order_by(TrialRunRow.key)).all()
        ledger = s.exec(select(LedgerRow).where(LedgerRow.kind == "train")).all()
    results = [json.loads(r.result) for r in rows]
    assert len(rows) == 2 and _overlap(*_windows(rows))
    granted = [r["max_joules"] for r in results]
    assert sum(granted) <= budget_j + 1e-6, granted  # without the accounting: 2 x 18 J
    assert all(r["stopped_reason"] == "energy share spent" for r in results), results
    spent = sum(r.joules for r in ledger if not r.key.endswith(":worker-startup"))
    # each trial may overshoot by one reporting interval (1 s of one busy core)
    watts = 15.0
    assert spent <= budget_j + 2 * watts * 1.0, (spent, granted)
    store.dispose()


def test_kill9_with_two_trials_in_flight_resumes_them_once(tmp_path: Path, e2e_db: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    pol = policy_file(
        tmp_path,
        **{
            "tokens_per_trial: 60000": "tokens_per_trial: 300000",
            TRIALS_2: "trials_per_cycle: 2\n  parallel_trials: 2",
        },
    )
    url = e2e_db
    common = ["--policy", str(pol), "--state-dir", str(state), "--db", url, "--no-serve"]
    log = tmp_path / "first.log"
    store = open_store(url)
    with daemon(*common, "--cycles", "1", log=log) as proc:

        def both_running() -> bool:
            with store.session() as s:
                rows = s.exec(select(TrialRunRow)).all()
            return len(rows) == 2 and all(r.status == "running" for r in rows)

        wait_for(both_running, 120, "two trials in flight", log, proc)
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    study = optuna.load_study(study_name="aifactory-tiny", storage=store.url)
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING"]
    asked = {r.key: (r.optuna_number, r.params) for r in _trials(store)}

    log2 = tmp_path / "second.log"
    with daemon(*common, "--cycles", "1", log=log2) as proc2:
        assert proc2.wait(240) == 0, log2.read_text()[-3000:]
    assert "resuming cycle tiny-c0001" in log2.read_text()

    trials = _trials(store)
    assert [t.status for t in trials] == ["complete", "complete"]
    assert {t.key: (t.optuna_number, t.params) for t in trials} == asked  # the same two
    with store.session() as s:
        versions = s.exec(select(ModelVersionRow)).all()
        ledger = s.exec(select(LedgerRow).where(LedgerRow.kind == "train")).all()
        keys = [e.idem_key for e in s.exec(select(AuditEventRow)).all() if e.idem_key]
    assert len(versions) == 1
    booked = sorted(r.key.split(":", 1)[1] for r in ledger)
    assert booked == [
        "trial:000",
        "trial:000:worker-startup",
        "trial:001",
        "trial:001:worker-startup",
    ], booked
    assert all(r.node and r.node.startswith("local:") for r in ledger)
    assert len(keys) == len(set(keys))
    states = [
        t.state.name
        for t in optuna.load_study(study_name="aifactory-tiny", storage=store.url).trials
    ]
    assert states == ["COMPLETE", "COMPLETE"]
    assert CycleBook(store).get("tiny-c0001").status == "completed"  # type: ignore[union-attr]
    verify = cli("audit", "verify", "--db", url)
    assert verify.returncode == 0, verify.stdout
    store.dispose()


def _trials(store: object) -> list[TrialRunRow]:
    with store.session() as s:  # type: ignore[attr-defined]
        return list(s.exec(select(TrialRunRow).order_by(TrialRunRow.key)).all())
