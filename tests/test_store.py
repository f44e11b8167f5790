"""The store's aggregates, one suite over SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlmodel import select

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.db import Store
from adapters.store.ledger import Ledger
from adapters.store.registry import ArtefactCorruptError, ModelRegistry
from adapters.store.tables import AuditEventRow, DataFileRow
from policies import parse_policy

# audit ----------------------------------------------------------------------------------


def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(
            agent="data",
            action="ingest",
            outcome="taken",
            reason=f"event {i}",
            figures={"i": i, "loss": float("nan")},
            cycle_id="c1",
            policy_version="p",
        )


def test_audit_append_filter_and_verify(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 5)
    log.append(
        agent="energy",
        action="allow",
        outcome="refused",
        reason="budget",
        figures={"shortfall": 3},
        cycle_id="c2",
    )
    assert len(log.events()) == 6
    assert [e.agent for e in log.events(agent="energy")] == ["energy"]
    assert len(log.events(cycle_id="c1")) == 5
    assert log.events(limit=2)[-1].reason == "budget"
    assert log.events()[0].figures["loss"] == "nan"
    first_ts = log.events()[3].ts
    assert len(log.events(since=first_ts)) == 3
    report = log.verify()
    assert report.ok and report.events == 6


def test_audit_idempotency_key(store: Store) -> None:
    log = AuditLog(store)
    a = log.append(agent="trainer", action="run", outcome="taken", reason="x", key="c1:t0")
    b = log.append(agent="trainer", action="run", outcome="taken", reason="x", key="c1:t0")
    assert a.seq == b.seq and len(log.events()) == 1
    with pytest.raises(ValueError):
        log.append(agent="a", action="b", outcome="maybe", reason="r")  # type: ignore[arg-type]


def test_audit_verify_detects_edit(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 5)
    with store.session() as s:
        row = s.get(AuditEventRow, 3)
        assert row is not None
        row.reason = "nothing to see here"
        s.add(row)
        s.commit()
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 3 and "edited" in report.problem


def test_audit_verify_detects_deletion(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 5)
    with store.session() as s:
        s.delete(s.get(AuditEventRow, 2))
        s.commit()
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 3 and "deleted" in report.problem


def test_audit_verify_detects_reorder(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 5)
    with store.session() as s:
        rows = {r.seq: r for r in s.exec(select(AuditEventRow)).all()}
        two, three = rows[2], rows[3]
        payload = ("ts", "reason", "figures", "prev_hash", "hash")
        a = {k: getattr(two, k) for k in payload}
        b = {k: getattr(three, k) for k in payload}
        # swap the two events' contents (move event 3 before event 2)
        for k in payload:
            setattr(two, k, f"tmp-{k}" if k in ("prev_hash",) else getattr(two, k))
        s.add(two)
        s.commit()
        for k in payload:
            setattr(three, k, a[k])
        s.add(three)
        s.commit()
        for k in payload:
            setattr(two, k, b[k])
        s.add(two)
        s.commit()
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 2


def test_audit_concurrent_writers_never_fork(store: Store) -> None:
    log = AuditLog(store)

    def writer(n: int) -> None:
        for i in range(10):
            log.append(agent=f"w{n}", action="a", outcome="taken", reason=str(i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.verify().ok and len(log.events()) == 40


# registry -------------------------------------------------------------------------------


def register(reg: ModelRegistry, tmp_path: Path, key: str, content: bytes) -> int:
    art = tmp_path / f"{key.replace(':', '_')}.pt"
    art.write_bytes(content)
    m = reg.register(
        policy_name="p",
        key=key,
        artefact=art,
        cycle_id="c",
        dataset_version="d",
        trial_key=f"{key}:t",
        params={"lr": 0.1},
        tokens=100,
        joules=2.5,
        energy_method="estimated",
        valid_bpb=3.0,
    )
    return m.version


def test_registry_versions_idempotent_and_checksummed(store: Store, tmp_path: Path) -> None:
    reg = ModelRegistry(store, tmp_path / "models")
    assert register(reg, tmp_path, "c1:candidate", b"one") == 1
    assert register(reg, tmp_path, "c1:candidate", b"one") == 1
    assert register(reg, tmp_path, "c2:candidate", b"two") == 2
    m = reg.get("p", 2)
    assert m is not None and m.params == {"lr": 0.1} and m.joules == 2.5
    assert Path(reg.verified_path(m)).read_bytes() == b"two"
    Path(m.artefact_path).write_bytes(b"tampered")
    with pytest.raises(ArtefactCorruptError):
        reg.verified_path(m)
    reg.set_verdict("p", 2, "refused", {"why": "worse"})
    assert reg.get("p", 2).status == "refused"  # type: ignore[union-attr]


def test_registry_promote_rollback_history(store: Store, tmp_path: Path) -> None:
    reg = ModelRegistry(store, tmp_path / "models")
    for i in (1, 2, 3):
        register(reg, tmp_path, f"c{i}:candidate", f"m{i}".encode())
    reg.promote("p", 1, by="deployer", reason="first", key="c1:promote")
    reg.promote("p", 2, by="deployer", reason="better", key="c2:promote")
    reg.promote("p", 2, by="deployer", reason="better", key="c2:promote")  # replay: no-op
    assert reg.aliases("p") == {"champion": 2, "previous": 1}
    assert reg.rollback("p", by="ops", reason="bad") == (2, 1)
    assert reg.aliases("p") == {"champion": 1, "previous": 2}
    assert reg.get("p", 2).status == "rolled_back"  # type: ignore[union-attr]
    with pytest.raises(LookupError):  # no toggling back to the version just rolled away from
        reg.rollback("p", by="ops", reason="again")
    reg.set_verdict("p", 3, "refused", {})
    with pytest.raises(LookupError):
        reg.rollback("p", to=3, by="ops", reason="refused one")
    reg.set_verdict("p", 3, "blessed", {})
    assert reg.rollback("p", to=3, by="ops", reason="try 3") == (1, 3)
    history = reg.alias_history("p")
    assert [(h.alias, h.to_version) for h in history if h.alias == "champion"] == [
        ("champion", 1),
        ("champion", 2),
        ("champion", 1),
        ("champion", 3),
    ]
    with pytest.raises(KeyError):
        reg.rollback("p", to=99, by="ops", reason="x")


def test_rollback_without_previous(store: Store, tmp_path: Path) -> None:
    reg = ModelRegistry(store, tmp_path / "models")
    with pytest.raises(LookupError):
        reg.rollback("p", by="ops", reason="x")


# ledger, data, cycles ---------------------------------------------------------------------


def test_ledger_idempotent_totals(store: Store) -> None:
    led = Ledger(store)
    assert led.record(
        key="c1:t0",
        policy_name="p",
        kind="train",
        tokens=100,
        joules=10,
        method="estimated",
        cycle_id="c1",
        day="2026-01-01",
    )
    assert not led.record(
        key="c1:t0",
        policy_name="p",
        kind="train",
        tokens=100,
        joules=10,
        method="estimated",
        cycle_id="c1",
        day="2026-01-01",
    )
    led.record(
        key="c1:eval",
        policy_name="p",
        kind="eval",
        tokens=50,
        joules=5,
        method="measured",
        cycle_id="c1",
        day="2026-01-01",
    )
    led.record(
        key="c2:t0",
        policy_name="p",
        kind="train",
        tokens=7,
        joules=1,
        method="estimated",
        cycle_id="c2",
        day="2026-01-02",
    )
    day = led.totals("p", day="2026-01-01")
    assert (day.tokens, day.joules, day.method) == (150, 15, "measured+estimated")
    assert day.tokens_per_joule == pytest.approx(10.0)
    assert led.totals("p", kind="train").tokens == 107
    assert led.totals("p", cycle_id="c2").joules == 1


def test_catalog_and_datasets(store: Store) -> None:
    cat = DataCatalog(store)
    assert cat.record_file(
        DataFileRow(sha256="a" * 64, policy_name="p", source_path="/x", status="ingested")
    )
    assert not cat.record_file(
        DataFileRow(sha256="a" * 64, policy_name="p", source_path="/x", status="ingested")
    )
    cat.record_file(
        DataFileRow(
            sha256="b" * 64, policy_name="p", source_path="/y", status="quarantined", reason="empty"
        )
    )
    assert [f.sha256[0] for f in cat.unassigned("p")] == ["a"]
    assert [f.reason for f in cat.quarantined("p")] == ["empty"]
    ds = cat.create(
        policy_name="p",
        version="v1",
        parent=None,
        file_hashes=["a" * 64],
        new_file_hashes=["a" * 64],
        n_bytes=10,
        byte_hist=[0] * 256,
        cycle_id="c1",
    )
    assert cat.unassigned("p") == []
    assert cat.latest("p") == ds and cat.get("v1") == ds and ds.cycle_id == "c1"


def test_cycles_and_approvals(store: Store) -> None:
    book = CycleBook(store)
    pol = parse_policy("name: p\n")
    assert book.save_policy(pol, "f.yaml") == pol.version
    assert book.save_policy(pol, "f.yaml") == pol.version
    c1 = book.start("p", pol.version, "schedule")
    assert c1.id == "p-c0001" and book.unfinished("p").id == c1.id  # type: ignore[union-attr]
    book.finish(c1.id, "completed", {"x": 1})
    assert book.unfinished("p") is None and book.completed_count("p") == 1
    c2 = book.start("p", pol.version, "new data")
    assert c2.number == 2
    req = book.request_approval("p", c2.id, 7)
    assert book.request_approval("p", c2.id, 7).id == req.id
    decided = book.decide_approval(int(req.id or 0), True, "alice", "looks good")
    assert decided.status == "approved" and decided.decided_by == "alice"
    with pytest.raises(ValueError):
        book.decide_approval(int(req.id or 0), False, "bob", "too late")
    with pytest.raises(KeyError):
        book.decide_approval(999, True, "bob", "")
    book.publish_state("p", pid=42, serving_url="http://x")
    assert book.daemon_state("p").pid == 42  # type: ignore[union-attr]
    assert book.policy_names() == ["p"]


def test_audit_verify_detects_truncated_tail(store: Store) -> None:
    log = AuditLog(store)
    fill(log, 4)
    with store.session() as s:
        s.delete(s.get(AuditEventRow, 4))
        s.commit()
    report = log.verify()
    assert not report.ok and "missing at the end" in report.problem


def test_challenger_alias_and_history(store: Store, tmp_path: Path) -> None:
    reg = ModelRegistry(store, tmp_path / "models")
    register(reg, tmp_path, "c1:candidate", b"one")
    reg.set_challenger("p", 1, by="trainer-agent", reason="candidate of c1", key="c1:challenger")
    reg.set_challenger("p", 1, by="trainer-agent", reason="candidate of c1", key="c1:challenger")
    reg.promote("p", 1, by="deployer-agent", reason="blessed", key="c1:promote")
    assert reg.aliases("p") == {"challenger": 1, "champion": 1}
    moves = [(h.alias, h.to_version, h.by) for h in reg.alias_history("p")]
    assert moves == [("challenger", 1, "trainer-agent"), ("champion", 1, "deployer-agent")]
