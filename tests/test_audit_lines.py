"""Audit events carry their production line; one chain covers every line; a store made
before lines existed is upgraded in place with its chain intact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from adapters.store.audit import AuditLog
from adapters.store.db import Store


def test_line_views_share_one_chain_and_filter_by_line(store: Store) -> None:
    log = AuditLog(store)
    a, b = log.for_line("a"), log.for_line("b")
    a.append(agent="data", action="ingest", outcome="taken", reason="a1")
    b.append(agent="data", action="ingest", outcome="taken", reason="b1")
    log.append(agent="controller", action="start_daemon", outcome="taken", reason="factory")
    a.append(agent="energy", action="allocate", outcome="taken", reason="a2", line="a")
    assert [e.reason for e in log.events(line="a")] == ["a1", "a2"]
    assert [e.line for e in log.events()] == ["a", "b", None, "a"]
    assert log.verify().ok and len(log.events()) == 4


def test_an_edited_line_breaks_the_chain(store: Store) -> None:
    log = AuditLog(store)
    log.for_line("a").append(agent="data", action="ingest", outcome="taken", reason="x")
    log.for_line("a").append(agent="data", action="ingest", outcome="taken", reason="y")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE af_audit_event SET line = 'b' WHERE reason = 'x'")
    report = log.verify()
    assert not report.ok and "edited" in report.problem


def test_a_store_from_before_lines_is_upgraded_and_still_verifies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store(url)
    old.create_all()
    AuditLog(old).append(agent="data", action="ingest", outcome="taken", reason="before")
    old.dispose()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # what an earlier version created
        conn.execute("DROP INDEX IF EXISTS ix_af_audit_event_line")
        conn.execute("ALTER TABLE af_audit_event DROP COLUMN line")
    new = Store(url)
    new.create_all()
    log = AuditLog(new)
    log.for_line("a").append(agent="data", action="ingest", outcome="taken", reason="after")
    assert [(e.reason, e.line) for e in log.events()] == [("before", None), ("after", "a")]
    assert log.verify().ok
    new.dispose()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(af_audit_event)")}
    assert "ix_af_audit_event_line" in indexes
