"""Leader election and fencing: the pure decision, the lease and the fence on a real
PostgreSQL, and the SQLite lock that keeps a second daemon off a store."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapters.store.audit import AuditLog
from adapters.store.db import Store
from adapters.store.fencing import Fence, install_fencing, is_fenced
from adapters.store.lease import LeaseTable
from adapters.store.ledger import Ledger
from adapters.store.schema_lock import schema_lock
from adapters.store.state_lock import StateLock, StateLockedError
from agents.leadership import LeaseView, decide_lease

# the decision ------------------------------------------------------------------------


def view(holder: str = "", epoch: int = 0, expires: float = 0.0, now: float = 100.0, **kw):
    return LeaseView(holder=holder, epoch=epoch, expires_at=expires, now=now, **kw)


def test_follower_takes_a_vacant_released_or_expired_lease_and_follows_a_live_one() -> None:
    assert decide_lease(view(), "b", None).why == "vacant"
    assert decide_lease(view(released=True), "b", None).why == "released"
    expired = decide_lease(view("a", 3, expires=97.5), "b", None)
    assert expired.action == "acquire" and expired.why == "expired" and "2.5s ago" in expired.reason
    live = decide_lease(view("a", 3, expires=110.0), "b", None)
    assert live.action == "follow" and "a leads term 3" in live.reason


def test_leader_renews_only_its_own_term_and_loses_a_lapsed_or_taken_one() -> None:
    assert decide_lease(view("a", 3, expires=105.0), "a", 3).action == "renew"
    taken = decide_lease(view("b", 4, expires=110.0), "a", 3)
    assert taken.action == "lost" and "held by b in term 4" in taken.reason
    # the same holder name but a newer term (a restarted process reusing the id) is not ours
    assert decide_lease(view("a", 4, expires=110.0), "a", 3).action == "lost"
    lapsed = decide_lease(view("a", 3, expires=99.0), "a", 3)
    assert lapsed.action == "lost" and "lapsed" in lapsed.reason


# the lease and the fence on PostgreSQL -------------------------------------------------


@pytest.fixture
def pg_store(pg_url: str):
    store = Store(pg_url)
    store.create_all()
    install_fencing(store.engine)
    LeaseTable(store).ensure()
    yield store
    store.dispose()


@pytest.mark.postgres
def test_members_asking_at_the_same_instant_elect_exactly_one_leader(pg_store: Store) -> None:
    stores = [Store(pg_store.url) for _ in range(2)]
    try:
        for round_ in range(20):
            with pg_store.engine.begin() as conn:  # vacant again
                conn.execute(text("UPDATE af_lease SET holder = '', expires_at = 0"))
            barrier = threading.Barrier(2)
            outcomes: dict[str, str] = {}
            threads = [
                threading.Thread(target=_ask, args=(f"m{i}", s, barrier, outcomes))
                for i, s in enumerate(stores)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes.values()) == ["acquire", "follow"], (round_, outcomes)
        assert LeaseTable(pg_store).current()["epoch"] == 20  # one new term per round
    finally:
        for s in stores:
            s.dispose()


def _ask(me: str, store: Store, barrier: threading.Barrier, out: dict[str, str]) -> None:
    barrier.wait()
    out[me] = LeaseTable(store).attempt(me, None, 10.0).decision.action


@pytest.mark.postgres
def test_a_stale_terms_writes_are_refused_in_the_same_transaction(pg_store: Store) -> None:
    lease = LeaseTable(pg_store)
    fence = Fence()
    refused: list[str] = []
    fence.on_refused(refused.append)
    acting = Store(pg_store.url, fence)
    try:
        # before any term: a member's acting writes are refused (term 0 is nobody's)
        with pytest.raises(Exception) as before:
            Ledger(acting).record(
                key="k0", policy_name="p", kind="train", tokens=1, joules=1, method="measured"
            )
        assert is_fenced(before.value)
        first = lease.attempt("a", None, 30.0)
        fence.enter_term(first.epoch)
        Ledger(acting).record(
            key="k1", policy_name="p", kind="train", tokens=1, joules=1, method="measured"
        )
        AuditLog(acting).append(agent="controller", action="x", outcome="taken", reason="in term")
        # another member takes over (the lease expired)
        with pg_store.engine.begin() as conn:
            conn.execute(text("UPDATE af_lease SET expires_at = 0"))
        second = lease.attempt("b", None, 30.0)
        assert second.decision.action == "acquire" and second.epoch == first.epoch + 1
        with pytest.raises(Exception) as late:
            Ledger(acting).record(
                key="k2", policy_name="p", kind="train", tokens=1, joules=1, method="measured"
            )
        assert is_fenced(late.value) and "refused" in refused[-1]
        with pytest.raises(Exception) as audited:
            AuditLog(acting).append(agent="controller", action="y", outcome="taken", reason="late")
        assert is_fenced(audited.value)
        # nothing of the stale term landed; an unfenced connection (the CLI) still writes
        assert [r.key for r in Ledger(pg_store).all_rows()] == ["k1"]
        assert AuditLog(pg_store).verify().ok
        Ledger(pg_store).record(
            key="op", policy_name="p", kind="serve", tokens=1, joules=0, method="unmetered"
        )
        with pytest.raises(ValueError):
            fence.enter_term(first.epoch - 1)  # a token only moves forward
    finally:
        acting.dispose()


@pytest.mark.postgres
def test_a_new_term_waits_for_the_old_terms_write_in_flight(pg_store: Store) -> None:
    """No write of an old term commits after a new term began: the new term's update waits
    for the transaction that checked the old term, and every write after it is refused."""
    from adapters.store.tables import LedgerRow

    lease, fence = LeaseTable(pg_store), Fence()
    acting = Store(pg_store.url, fence)
    try:
        fence.enter_term(lease.attempt("a", None, 30.0).epoch)  # type: ignore[arg-type]
        with pg_store.engine.begin() as conn:
            conn.execute(text("UPDATE af_lease SET expires_at = 0"))
        taken: list[int | None] = []
        with acting.session() as s:  # a's write, checked and in flight
            s.add(LedgerRow(key="inflight", policy_name="p", day="d", kind="train"))
            s.flush()
            b = threading.Thread(target=lambda: taken.append(lease.attempt("b", None, 30).epoch))
            b.start()
            b.join(1.0)
            assert b.is_alive() and not taken  # b's new term waits for a's transaction
            s.commit()
        b.join(10)
        assert taken == [2]
        with pytest.raises(Exception) as late:
            Ledger(acting).record(
                key="after", policy_name="p", kind="train", tokens=1, joules=1, method="measured"
            )
        assert is_fenced(late.value)
        assert [r.key for r in Ledger(pg_store).all_rows()] == ["inflight"]
    finally:
        acting.dispose()


@pytest.mark.postgres
def test_optuna_writes_of_a_stale_term_are_refused_too(pg_store: Store) -> None:
    import optuna

    fence = Fence()
    storage = optuna.storages.RDBStorage(pg_store.url)
    fence.attach(storage.engine)
    install_fencing(pg_store.engine)  # Optuna's tables exist now
    lease = LeaseTable(pg_store)
    fence.enter_term(lease.attempt("a", None, 30.0).epoch)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    with pg_store.engine.begin() as conn:
        conn.execute(text("UPDATE af_lease SET expires_at = 0"))
    lease.attempt("b", None, 30.0)
    with pytest.raises(Exception) as late:
        study.tell(trial, 1.0)
    assert is_fenced(late.value)
    fresh = optuna.load_study(study_name="s", storage=pg_store.url)
    assert fresh.trials[0].state == optuna.trial.TrialState.RUNNING


# one daemon per SQLite store ----------------------------------------------------------


def test_a_second_daemon_on_a_sqlite_store_is_refused_naming_the_first(tmp_path: Path) -> None:
    db = tmp_path / "aifactory.db"
    first = StateLock(db)
    first.acquire(note="serving on 127.0.0.1:8000")
    try:
        with pytest.raises(StateLockedError) as refused:
            StateLock(db).acquire()
        message = str(refused.value)
        assert f"pid {__import__('os').getpid()}" in message and "127.0.0.1:8000" in message
        assert "--state-dir" in message
    finally:
        first.release()
    StateLock(db).acquire()  # released: the next one may start


def test_a_killed_daemons_lock_is_gone_with_it(tmp_path: Path) -> None:
    db = tmp_path / "aifactory.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from adapters.store.state_lock import StateLock; "
            f"StateLock({str(db)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StateLockedError, match=f"pid {holder.pid}"):
            StateLock(db).acquire()
    finally:
        holder.kill()
        holder.wait()
    StateLock(db).acquire()


def test_the_daemon_refuses_to_start_on_a_locked_sqlite_store(tmp_path: Path) -> None:
    from conftest import TINY_POLICY
    from rich.console import Console

    from controller.runner import FactoryRunner
    from controller.settings import Settings

    settings = Settings(state_dir=tmp_path / "state", policy=TINY_POLICY, serve=False)
    first = StateLock((tmp_path / "state" / "aifactory.db").resolve())
    first.acquire(note="serving on 127.0.0.1:8000")
    console = Console(record=True, width=200)
    try:
        assert FactoryRunner(settings, console).run(cycles=1) == 4
    finally:
        first.release()
    said = console.export_text()
    assert "refused to start: another daemon is running" in said and "127.0.0.1:8000" in said
    assert not any((tmp_path / "state" / "trials").iterdir())  # it did nothing


# membership: the thread that asks, renews, steps down ---------------------------------


def _member(url: str, ttl: float = 2.0, renew: float = 0.3) -> tuple[Any, Store, Store]:
    from controller.membership import Membership
    from controller.settings import LeaseSettings

    fence = Fence()
    acting, own = Store(url, fence), Store(url)
    member = Membership(
        LeaseTable(own), fence, AuditLog(acting), LeaseSettings(ttl_s=ttl, renew_s=renew), print
    )
    return member, acting, own


@pytest.mark.postgres
def test_a_clean_stop_hands_the_lease_over_and_a_fenced_write_ends_a_term(
    pg_store: Store,
) -> None:
    import time

    m1, acting1, own1 = _member(pg_store.url)
    m2, acting2, own2 = _member(pg_store.url)
    try:
        m1.start()
        assert m1.leading and m1.changes.get_nowait().role == "leader"
        m2.start()
        assert not m2.leading
        m1.stop()  # audits its stop in its term, then releases
        deadline = time.monotonic() + 3
        while not m2.leading and time.monotonic() < deadline:
            time.sleep(0.05)
        change = m2.changes.get(timeout=1)
        assert change.role == "leader" and change.why == "released" and change.epoch == 2
        deadline = time.monotonic() + 3  # the term is told first, then audited
        while len(AuditLog(pg_store).events()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = AuditLog(pg_store).events()
        assert [e.action for e in events] == ["lead", "step_down", "lead"]
        # m1's acting store keeps term 1: a straggler's write is refused and reported, and
        # the leader audits the refusal on its next round
        with pytest.raises(Exception) as late:
            AuditLog(acting1).append(agent="trainer", action="x", outcome="taken", reason="late")
        assert is_fenced(late.value)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(
            e.action == "fence" for e in AuditLog(pg_store).events()
        ):
            time.sleep(0.05)
        fence_events = [e for e in AuditLog(pg_store).events() if e.action == "fence"]
        assert len(fence_events) == 1 and m1.id in fence_events[0].reason
        assert fence_events[0].outcome == "refused"
        assert AuditLog(pg_store).verify().ok
    finally:
        m2.stop()
        for s in (acting1, own1, acting2, own2):
            s.dispose()


def test_healthz_and_metrics_show_the_members_role(server: Any) -> None:
    import httpx

    assert "member" not in httpx.get(f"{server.url}/healthz").json()  # alone: no members
    server.member = {"member": "h:1:ab", "role": "follower", "epoch": 3}
    assert httpx.get(f"{server.url}/healthz").json()["member"]["role"] == "follower"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'aifactory_member_leader{member="h:1:ab",role="follower"} 0.0' in metrics
    assert 'aifactory_member_epoch{member="h:1:ab"} 3.0' in metrics


@pytest.mark.postgres
def test_a_lapsed_leader_asks_again_only_once_its_last_term_is_over(pg_store: Store) -> None:
    """Its own clock ends a term at once; it asks for the lease again only when the runner
    says the old term's lines have ended, and then in a new term (fenced apart)."""
    import time

    member, acting, own = _member(pg_store.url, ttl=1.0, renew=0.3)
    over = threading.Event()
    member.may_lead = over.is_set
    try:
        member.round()  # a vacant lease, but the runner is not ready: no term
        assert not member.leading
        over.set()
        member.round()
        assert member.leading and member.changes.get_nowait().epoch == 1
        over.clear()  # the runner has lines of term 1 still running
        time.sleep(1.0)
        member.check_clock()  # the main thread's check: lapsed
        change = member.changes.get_nowait()
        assert (change.role, change.why, change.epoch) == ("follower", "lapsed", 1)
        member._lose("lapsed", "again", 1)  # news about term 1 twice changes nothing
        assert member.changes.empty()
        for _ in range(3):
            member.round()
        assert not member.leading  # lease expired long ago, yet not asked for
        over.set()
        member.round()
        assert member.leading and member.changes.get_nowait().epoch == 2
        assert member.fence.epoch == 2
    finally:
        member.stop()
        acting.dispose()
        own.dispose()


@pytest.mark.postgres
def test_members_changing_the_schema_together_do_not_deadlock(pg_store: Store) -> None:
    """A member waiting for the schema lock runs no statement meanwhile, so the holder's
    CREATE INDEX CONCURRENTLY (the checkpointer's migrations) is not stuck behind it."""
    pg_store.create_all()
    with pg_store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t_cic (id int)"))
    other = Store(pg_store.url)
    done: list[str] = []

    def second_member() -> None:
        with other.checkpointer():
            done.append("checkpointer")

    with schema_lock(pg_store.engine):
        thread = threading.Thread(target=second_member)
        thread.start()
        time.sleep(1.0)  # the other member is waiting for the lock now
        with pg_store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("SET statement_timeout = '20s'"))
            c.execute(text("CREATE INDEX CONCURRENTLY t_cic_id ON t_cic (id)"))
        assert not done  # it waited for us
    thread.join(60)
    other.dispose()
    assert done == ["checkpointer"]
