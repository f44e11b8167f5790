"""Two daemons on one PostgreSQL database, as two hosts would run them (each its own state
directory and serving port): one leads, the other serves and waits. A leader paused
mid-trial (SIGSTOP) past its lease is replaced and, continued, writes nothing and steps
down; the new leader killed with -9 mid-trial is replaced by the old one, which reads the
dead one's trials from the database (its state directory is deleted) and completes the
cycle once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlmodel import select
from test_e2e import cli, daemon, open_store, policy_file, wait_for

from adapters.store.lease import LeaseTable
from adapters.store.tables import (
    AuditEventRow,
    CycleRow,
    LedgerRow,
    MemberRow,
    ModelVersionRow,
    TrialRunRow,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TTL_S, RENEW_S = 4.0, 1.0
ENV = {
    "AIFACTORY_LEASE__TTL_S": str(TTL_S),
    "AIFACTORY_LEASE__RENEW_S": str(RENEW_S),
    "AIFACTORY_TICK_S": "0.5",
}


def _members(store: Any) -> dict[int, MemberRow]:
    with store.session() as s:
        return {m.pid: m for m in s.exec(select(MemberRow)).all()}


def _trial(store: Any, suffix: str) -> TrialRunRow | None:
    with store.session() as s:
        rows = s.exec(select(TrialRunRow)).all()
    return next((r for r in rows if r.key.endswith(suffix)), None)


def _holder_pid(lease: LeaseTable) -> int | None:
    holder = lease.current().get("holder") or ""
    return int(holder.split(":")[1]) if holder else None


def _url(store: Any, pid: int) -> str:
    member = _members(store).get(pid)
    return member.serving_url if member is not None else ""


def test_paused_leader_is_fenced_and_killed_leader_is_replaced(tmp_path: Path, pg_url: str) -> None:
    pol = policy_file(  # one era of data: one cycle, and no second
        tmp_path,
        **{"tokens_per_trial: 60000": "tokens_per_trial: 300000", "      - [concurrent]\n": ""},
    )
    state = {n: tmp_path / f"state-{n}" for n in "ab"}
    logs = {n: tmp_path / f"{n}.log" for n in "ab"}

    def args(n: str) -> list[str]:
        return ["--policy", str(pol), "--state-dir", str(state[n]), "--db", pg_url, "--port", "0"]

    # both start at once (the leader's first trial must not end before the other joins)
    with (
        daemon(*args("a"), log=logs["a"], env=ENV) as first,
        daemon(*args("b"), log=logs["b"], env=ENV) as second,
    ):
        store = open_store(pg_url)
        lease = LeaseTable(store)
        wait_for(
            lambda: (
                {first.pid, second.pid} <= set(_members(store))
                and _holder_pid(lease) in (first.pid, second.pid)
            ),
            90,
            "both join and one leads",
            logs["a"],
            first,
        )
        # "a" is whoever leads, "b" the other
        if _holder_pid(lease) == second.pid:
            state = {"a": state["b"], "b": state["a"]}
            logs = {"a": logs["b"], "b": logs["a"]}
        a, b = (first, second) if _holder_pid(lease) == first.pid else (second, first)
        # b follows, and serves: /healthz says so
        wait_for(lambda: _url(store, b.pid), 30, "b serving", logs["b"], b)
        health = httpx.get(_url(store, b.pid) + "/healthz", timeout=10).json()
        assert health["member"]["role"] == "follower"

        # 1. pause the leader mid-trial, past its lease
        first = wait_for(
            lambda: (t := _trial(store, ":trial:000")) is not None and t.status == "running",
            120,
            "a's first trial",
            logs["a"],
            a,
        )
        assert first
        a_workers = {c.pid for c in psutil.Process(a.pid).children(recursive=True)}
        os.kill(a.pid, signal.SIGSTOP)
        paused = time.monotonic()
        wait_for(
            lambda: _holder_pid(lease) == b.pid,
            TTL_S + RENEW_S + 10,
            "b takes over",
            logs["b"],
            b,
        )
        took = time.monotonic() - paused
        assert took <= TTL_S + 2 * RENEW_S + 3, took  # TTL + one round, and slack
        wait_for(
            lambda: "resuming cycle tiny-c0001" in logs["b"].read_text(),
            60,
            "b resumes the cycle",
            logs["b"],
            b,
        )
        # a's worker finishes its trial meanwhile: its result waits for a paused parent,
        # whose first act on waking is to write it (and be refused)
        _wait_idle([c for c in psutil.Process(a.pid).children(recursive=True)], 90)
        os.kill(a.pid, signal.SIGCONT)
        wait_for(
            lambda: "no longer leads" in logs["a"].read_text(), 30, "a steps down", logs["a"], a
        )
        wait_for(lambda: _members(store)[a.pid].role == "follower", 30, "a follows", logs["a"], a)

        # 2. kill the new leader -9 mid-trial; its host (state directory) is gone too
        wait_for(
            lambda: (t := _trial(store, ":trial:001")) is not None and t.status == "running",
            180,
            "b's second trial",
            logs["b"],
            b,
        )
        os.kill(b.pid, signal.SIGKILL)
        killed = time.monotonic()
        b.wait(10)
        shutil.rmtree(state["b"])
        wait_for(
            lambda: _holder_pid(lease) == a.pid, TTL_S + RENEW_S + 10, "a takes over", logs["a"], a
        )
        assert time.monotonic() - killed <= TTL_S + 2 * RENEW_S + 3
        wait_for(lambda: _cycle(store) == "completed", 240, "the cycle completes", logs["a"], a)
        health = httpx.get(_url(store, a.pid) + "/healthz", timeout=10).json()
        assert health["member"]["role"] == "leader"
        a.send_signal(signal.SIGTERM)
        assert a.wait(60) == 0, logs["a"].read_text()[-3000:]

    _check_once(store, a_workers, pg_url)
    store.dispose()


def _wait_idle(procs: list[psutil.Process], timeout_s: float) -> None:
    """Until the processes have used no CPU for a second (their work is done)."""
    deadline = time.monotonic() + timeout_s

    def used() -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    before = used()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = used()
        if now - before < 0.05:
            return
        before = now


def _cycle(store: Any) -> str | None:
    with store.session() as s:
        rows = s.exec(select(CycleRow)).all()
    assert len(rows) <= 1, [r.id for r in rows]
    return rows[0].status if rows else None


def _check_once(store: Any, a_workers: set[int], url: str) -> None:
    """The cycle completed once: no duplicate trial, version, ledger row or event; the
    paused leader's trial (finished by its worker during the pause) was never written."""
    with store.session() as s:
        trials = s.exec(select(TrialRunRow)).all()
        versions = s.exec(select(ModelVersionRow)).all()
        ledger = s.exec(select(LedgerRow).where(LedgerRow.kind == "train")).all()
        events = s.exec(select(AuditEventRow)).all()
    assert len(trials) == 2 and all(t.status == "complete" for t in trials)
    assert len({t.optuna_number for t in trials}) == 2
    first = next(t for t in trials if t.key.endswith(":trial:000"))
    assert json.loads(first.result)["worker"]["pid"] not in a_workers
    assert len(versions) == 1
    trial_rows = [r.key for r in ledger if not r.key.endswith("worker-startup")]
    assert sorted(k.split(":", 1)[1] for k in trial_rows) == ["trial:000", "trial:001"]
    keys = [e.idem_key for e in events if e.idem_key]
    assert len(keys) == len(set(keys))
    leads = [json.loads(e.figures) for e in events if e.action == "lead"]
    assert [x["epoch"] for x in leads] == [1, 2, 3]
    assert [x["why"] for x in leads] == ["vacant", "expired", "expired"]
    # the paused leader's refused writes, audited by the leader of the day
    assert any(e.action == "fence" and e.outcome == "refused" for e in events)
    import optuna

    study = optuna.load_study(study_name="aifactory-tiny", storage=store.url)
    # a repeat of what the first leader ran (the new leader's sampler may draw it) is
    # recorded as failed, never trained, and carries what it repeats
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    states = [t.state.name for t in trained]
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states
    assert all(t.state.name == "FAIL" for t in study.trials if "duplicate_of" in t.user_attrs)
    verify = cli("audit", "verify", "--db", url)
    assert verify.returncode == 0, verify.stdout
    status = cli("status", "--db", url, "--json", "--line", "tiny", env=ENV)
    assert status.returncode == 0, status.stderr[-2000:]
    members = json.loads(status.stdout)["members"]
    assert {m["role"] for m in members} == {"stopped", "gone"}
