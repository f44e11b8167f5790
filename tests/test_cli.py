"""The `aifactory` operator commands, run in-process against a pre-filled store.

Every test runs on both backends (the `db_url` fixture): the store is filled through the
repository classes, then `controller.cli.main` reads or edits it like an operator would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_POLICY
from sqlmodel import select

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store, utcnow_iso
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelRegistry, sha256_file
from adapters.store.tables import AuditEventRow
from controller.cli import main
from policies.loader import load_policy, parse_policy

POLICY = "tiny"  # the name in tests/configs/tiny.yaml


@dataclass
class Env:
    store: Store
    db_url: str
    state_dir: Path
    tmp_path: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.store)

    @property
    def book(self) -> CycleBook:
        return CycleBook(self.store)

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.store, self.state_dir / "models")

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.store)

    def cli(self, *args: str) -> tuple[int, str]:
        """Run `aifactory ARGS --db --policy --state-dir`; returns (exit code, stdout)."""
        self.capsys.readouterr()  # drop anything printed while filling the store
        rc = main(
            [
                *args,
                "--db",
                self.db_url,
                "--policy",
                str(TINY_POLICY),
                "--state-dir",
                str(self.state_dir),
            ]
        )
        return rc, self.capsys.readouterr().out

    def register(self, n: int, *, policy: str = POLICY) -> int:
        """Register a fake model from a small artefact file; returns its version."""
        art = self.tmp_path / f"{policy}-m{n}.pt"
        art.write_bytes(f"weights of model {n}".encode())
        m = self.registry.register(
            policy_name=policy,
            key=f"{policy}-c{n:04d}:candidate",
            artefact=art,
            cycle_id=f"{policy}-c{n:04d}",
            dataset_version=f"ds{n}-0123456789abcdef",
            trial_key=f"{policy}-c{n:04d}:t0",
            params={"lr": 0.001 * n, "d_model": 32},
            tokens=1000 * n,
            joules=12.5 * n,
            energy_method="estimated",
            valid_bpb=4.0 - 0.25 * n,
        )
        return m.version

    def promote(self, version: int) -> None:
        self.registry.promote(
            POLICY, version, by="deployer", reason=f"v{version} wins", key=f"promote:{version}"
        )


@pytest.fixture
def env(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    monkeypatch.setattr("getpass.getuser", lambda: "ops")
    for name in ("AIFACTORY_DB_URL", "AIFACTORY_STATE_DIR", "AIFACTORY_POLICY"):
        monkeypatch.delenv(name, raising=False)
    store = Store(db_url)
    store.create_all()
    try:
        yield Env(store, db_url, tmp_path / "state", tmp_path, capsys)
    finally:
        store.dispose()


def fill_audit(env: Env) -> None:
    """Five events: three from the data agent in c0001, two others in c0002 / no cycle."""
    log = env.audit
    for i in range(3):
        log.append(
            agent="data",
            action="ingest",
            outcome="taken",
            reason=f"ingested batch {i}",
            figures={"files": i, "loss": float("nan")},
            cycle_id="tiny-c0001",
            policy_version="pv1",
        )
    log.append(
        agent="energy",
        action="allow",
        outcome="refused",
        reason="token budget exhausted",
        figures={"shortfall": 7},
        cycle_id="tiny-c0002",
    )
    log.append(agent="deployer", action="promote", outcome="deferred", reason="awaiting approval")


def table_rows(out: str) -> list[list[str]]:
    """The body rows of a rich table printed as plain text, one list of cells per row."""
    rows = []
    for line in out.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# audit ----------------------------------------------------------------------------------


def test_audit_lists_every_event(env: Env) -> None:
    fill_audit(env)
    rc, out = env.cli("audit")
    assert rc == 0
    assert "audit log (5 events)" in out
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    line, *rest = rows[3][2:]
    assert line == "-"  # written without a line (a factory's lines set it)
    assert rest == ["tiny-c0002", "energy", "allow", "refused", "token budget exhausted"]
    assert rows[4][3] == "-"  # no cycle
    assert "ingested batch 0" in out and "awaiting approval" in out


def test_audit_filters(env: Env) -> None:
    fill_audit(env)

    rc, out = env.cli("audit", "--agent", "data")
    assert rc == 0 and "(3 events)" in out
    assert {r[4] for r in table_rows(out)} == {"data"}

    rc, out = env.cli("audit", "--cycle", "tiny-c0002")
    assert rc == 0 and "(1 events)" in out
    (row,) = table_rows(out)
    assert (row[0], row[2], row[3], row[4]) == ("4", "-", "tiny-c0002", "energy")

    rc, out = env.cli("audit", "--limit", "2")
    assert rc == 0 and "(2 events)" in out
    assert [r[0] for r in table_rows(out)] == ["4", "5"]  # the latest two

    rc, out = env.cli("audit", "--agent", "data", "--limit", "1", "--json")
    assert rc == 0
    assert [e["seq"] for e in json_lines(out)] == [3]

    rc, out = env.cli("audit", "--agent", "nobody", "--json")
    assert rc == 0 and out.strip() == ""


def test_audit_since(env: Env) -> None:
    fill_audit(env)
    fourth = env.audit.events()[3]
    rc, out = env.cli("audit", "--since", fourth.ts, "--json")
    assert rc == 0
    assert [e["seq"] for e in json_lines(out)] == [4, 5]
    rc, out = env.cli("audit", "--since", "2999-01-01T00:00", "--json")
    assert rc == 0 and out.strip() == ""


def test_audit_json_one_object_per_line(env: Env) -> None:
    fill_audit(env)
    rc, out = env.cli("audit", "--json")
    assert rc == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 5
    events = [json.loads(line) for line in lines]
    for e in events:
        assert {"seq", "agent", "action", "outcome", "reason", "figures"} <= set(e)
        assert {"ts", "cycle_id", "policy_version", "hash"} <= set(e)
    first, fourth = events[0], events[3]
    assert first["seq"] == 1 and first["agent"] == "data" and first["action"] == "ingest"
    assert first["outcome"] == "taken" and first["reason"] == "ingested batch 0"
    assert first["figures"] == {"files": 0, "loss": "nan"}  # NaN stored portably
    assert first["cycle_id"] == "tiny-c0001" and first["policy_version"] == "pv1"
    assert fourth["seq"] == 4 and fourth["outcome"] == "refused"
    assert fourth["figures"] == {"shortfall": 7}
    assert events[4]["cycle_id"] is None
    assert [e["hash"] for e in events] == [e.hash for e in env.audit.events()]


def test_audit_verify_intact_chain(env: Env) -> None:
    fill_audit(env)
    rc, out = env.cli("audit", "verify")
    assert rc == 0
    assert "OK" in out and "5 events verified" in out


def test_audit_verify_empty_chain(env: Env) -> None:
    rc, out = env.cli("audit", "verify")
    assert rc == 0 and "OK" in out and "0 events" in out


def test_audit_verify_names_the_tampered_event(env: Env) -> None:
    fill_audit(env)
    with env.store.session() as s:
        row = s.get(AuditEventRow, 3)
        assert row is not None
        row.reason = "nothing to see here"
        s.add(row)
        s.commit()
    rc, out = env.cli("audit", "verify")
    assert rc == 1
    assert "BROKEN" in out and "chain OK" not in out
    assert "at event 3" in out and "event 3 was edited" in out
    # the listing still shows the tampered text: verify is what catches it
    rc, out = env.cli("audit", "--json")
    assert rc == 0 and json_lines(out)[2]["reason"] == "nothing to see here"


def test_audit_table_prints_reasons_verbatim(env: Env) -> None:
    env.audit.append(agent="data", action="ingest", outcome="taken", reason="era [json] added")
    env.audit.append(agent="data", action="ingest", outcome="taken", reason="bad tag [/x] here")
    rc, out = env.cli("audit")
    assert rc == 0
    assert "era [json] added" in out and "bad tag [/x] here" in out


# models ---------------------------------------------------------------------------------


def test_models_lists_versions_with_aliases(env: Env) -> None:
    for n in (1, 2, 3):
        assert env.register(n) == n
    env.register(1, policy="other")  # another policy's v1 is not listed
    env.promote(1)
    env.promote(2)
    rc, out = env.cli("models")
    assert rc == 0
    assert "model versions: tiny" in out
    rows = {r[0]: r for r in table_rows(out)}
    assert set(rows) == {"v1", "v2", "v3"}
    assert rows["v1"][1] == "previous"
    assert rows["v2"][1] == "champion"
    assert rows["v3"][1] == ""
    assert rows["v2"][3] == "tiny-c0002"  # cycle
    assert rows["v2"][4] == "ds2-012345"  # dataset, first ten characters
    assert rows["v2"][5] == "3.5000"  # valid bpb
    assert rows["v2"][6] == "2,000"  # tokens
    assert rows["v2"][7] == "25 (estimated)"  # joules

    rc, out = env.cli("models", "--json")
    assert rc == 0
    listed = json.loads(out)
    assert [m["version"] for m in listed] == [1, 2, 3]
    assert {m["policy_name"] for m in listed} == {"tiny"}


def test_models_list_empty(env: Env) -> None:
    rc, out = env.cli("models", "--json")
    assert rc == 0 and json.loads(out) == []


def test_models_show_prints_lineage_and_aliases(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.promote(1)
    env.promote(2)
    rc, out = env.cli("models", "show", "2")
    assert rc == 0
    data = json.loads(out)
    assert data["version"] == 2 and data["policy_name"] == "tiny"
    assert data["params"] == {"lr": 0.002, "d_model": 32}
    assert data["dataset_version"] == "ds2-0123456789abcdef"
    assert data["tokens"] == 2000
    assert data["joules"] == 25.0
    assert data["energy_method"] == "estimated"
    assert data["cycle_id"] == "tiny-c0002" and data["trial_key"] == "tiny-c0002:t0"
    assert data["aliases"] == ["champion"]
    assert data["artefact_sha256"] == sha256_file(env.tmp_path / "tiny-m2.pt")
    assert Path(data["artefact_path"]).read_bytes() == b"weights of model 2"

    rc, out = env.cli("models", "show", "1")
    assert rc == 0 and json.loads(out)["aliases"] == ["previous"]


def test_models_show_unknown_version(env: Env) -> None:
    env.register(1)
    rc, out = env.cli("models", "show", "99")
    assert rc == 1
    assert "no model version 99" in out


def test_models_show_needs_a_version(env: Env) -> None:
    rc, out = env.cli("models", "show")
    assert rc == 2 and "usage" in out


# rollback -------------------------------------------------------------------------------


def test_rollback_without_previous_champion_is_refused(env: Env) -> None:
    env.register(1)
    env.promote(1)
    rc, out = env.cli("rollback")
    assert rc == 1
    assert "rollback refused" in out and "no earlier" in out
    assert env.registry.aliases(POLICY) == {"champion": 1}
    events = env.audit.events(agent="operator")
    assert len(events) == 1
    e = events[0]
    assert (e.action, e.outcome) == ("rollback", "refused")
    assert e.reason.startswith("ops: ") and "no earlier" in e.reason
    assert e.figures["to"] is None


def test_rollback_restores_previous_and_to_moves_it_back(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.promote(1)
    env.promote(2)
    assert env.registry.aliases(POLICY) == {"champion": 2, "previous": 1}

    rc, out = env.cli("rollback", "--reason", "v2 is worse on live traffic")
    assert rc == 0
    assert "champion is now v1 (was v2)" in out
    assert env.registry.aliases(POLICY) == {"champion": 1, "previous": 2}
    events = env.audit.events(agent="operator")
    assert len(events) == 1
    e = events[0]
    assert (e.action, e.outcome) == ("rollback", "taken")
    assert e.figures == {"from": 2, "to": 1, "by": "ops"}
    assert "v2 -> v1" in e.reason and "v2 is worse on live traffic" in e.reason
    moves = [m for m in env.registry.alias_history(POLICY) if m.alias == "champion"]
    assert moves[-1].to_version == 1 and moves[-1].by == "ops"

    rc, out = env.cli("rollback", "--to", "2")
    assert rc == 0
    assert "champion is now v2 (was v1)" in out
    assert env.registry.aliases(POLICY) == {"champion": 2, "previous": 1}
    last = env.audit.events(agent="operator")[-1]
    assert (last.outcome, last.figures["from"], last.figures["to"]) == ("taken", 1, 2)
    assert "operator rollback" in last.reason  # the default --reason
    assert env.audit.verify().ok


def test_rollback_to_unknown_version_is_refused(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.promote(1)
    env.promote(2)
    rc, out = env.cli("rollback", "--to", "99")
    assert rc == 1 and "rollback refused" in out and "no model version 99" in out
    assert env.registry.aliases(POLICY) == {"champion": 2, "previous": 1}
    e = env.audit.events(agent="operator")[-1]
    assert (e.action, e.outcome) == ("rollback", "refused")
    assert e.figures == {"to": 99, "champion": 2, "by": "ops"}


# approvals ------------------------------------------------------------------------------


def approval_requests(env: Env) -> tuple[int, int]:
    """Two pending approvals (v1 from c0001, v2 from c0002); returns their ids."""
    book = env.book
    env.register(1)
    env.register(2)
    c1 = book.start(POLICY, "pv1", "schedule")
    c2 = book.start(POLICY, "pv1", "drift")
    a1 = book.request_approval(POLICY, c1.id, 1)
    a2 = book.request_approval(POLICY, c2.id, 2)
    assert a1.id is not None and a2.id is not None
    return a1.id, a2.id


def test_approve_then_approve_again(env: Env) -> None:
    a1, a2 = approval_requests(env)
    rc, out = env.cli("approve", str(a1), "--by", "alice", "--reason", "ok")
    assert rc == 0
    assert f"approval {a1} approved" in out and "tiny-c0001" in out
    row = {a.id: a for a in env.book.approvals(POLICY)}[a1]
    assert row.status == "approved" and row.decided_by == "alice" and row.reason == "ok"
    assert row.decided_at
    assert [a.id for a in env.book.approvals(POLICY, "pending")] == [a2]

    events = env.audit.events(agent="operator")
    assert len(events) == 1
    e = events[0]
    assert (e.action, e.outcome, e.cycle_id) == ("approve", "taken", "tiny-c0001")
    assert e.figures == {"approval_id": a1, "version": 1, "by": "alice"}
    assert e.line == POLICY
    assert "alice approved v1: ok" in e.reason

    rc, out = env.cli("approve", str(a1), "--by", "bob")
    assert rc == 1 and "already approved" in out
    row = {a.id: a for a in env.book.approvals(POLICY)}[a1]
    assert row.status == "approved" and row.decided_by == "alice"
    assert len(env.audit.events(agent="operator")) == 1  # nothing recorded for the refusal


def test_reject_with_reason(env: Env) -> None:
    a1, a2 = approval_requests(env)
    rc, out = env.cli("reject", str(a2), "--reason", "no")
    assert rc == 0 and f"approval {a2} rejected" in out
    rows = {a.id: a for a in env.book.approvals(POLICY)}
    assert rows[a2].status == "rejected" and rows[a2].reason == "no"
    assert rows[a2].decided_by == "ops"  # default: the current user
    assert rows[a1].status == "pending"
    e = env.audit.events(agent="operator")[-1]
    assert (e.action, e.outcome, e.cycle_id) == ("reject", "taken", "tiny-c0002")
    assert e.figures == {"approval_id": a2, "version": 2, "by": "ops"}
    assert "ops rejected v2: no" in e.reason

    rc, out = env.cli("approve", str(a2), "--by", "alice")
    assert rc == 1 and "already rejected" in out


def test_reject_needs_a_reason(env: Env) -> None:
    _, a2 = approval_requests(env)
    with pytest.raises(SystemExit) as exc:
        env.cli("reject", str(a2))
    assert exc.value.code == 2
    assert "--reason" in env.capsys.readouterr().err
    assert env.book.approvals(POLICY, "pending")[-1].id == a2


def test_decide_unknown_approval(env: Env) -> None:
    rc, out = env.cli("approve", "999", "--by", "alice")
    assert rc == 1 and "no approval request 999" in out
    assert env.audit.events() == []


# status ---------------------------------------------------------------------------------


def fill_status(env: Env) -> tuple[int, str]:
    """Champion v2 over v1, two cycles (the last failed), ledger rows, one pending approval."""
    env.register(1)
    env.register(2)
    env.register(3)
    env.promote(1)
    env.promote(2)
    env.registry.set_verdict(POLICY, 2, "blessed", {"candidate_recent_bpb": 3.25})
    book = env.book
    c1 = book.start(POLICY, "pv1", "schedule")
    book.finish(c1.id, "completed", {"promoted": 2})
    c2 = book.start(POLICY, "pv1", "drift")
    book.finish(c2.id, "failed", {"error": "boom"})
    decided = book.request_approval(POLICY, c1.id, 2)
    assert decided.id is not None
    book.decide_approval(decided.id, True, "alice", "ok")
    pending = book.request_approval(POLICY, c2.id, 3)
    assert pending.id is not None
    ledger = env.ledger
    ledger.record(
        key="t1",
        policy_name=POLICY,
        kind="train",
        tokens=1200,
        joules=40.0,
        method="estimated",
        cycle_id=c1.id,
    )
    ledger.record(
        key="e1",
        policy_name=POLICY,
        kind="eval",
        tokens=300,
        joules=10.25,
        method="measured",
        cycle_id=c1.id,
    )
    ledger.record(
        key="old",
        policy_name=POLICY,
        kind="train",
        tokens=99999,
        joules=1.0,
        method="estimated",
        day="2000-01-01",
    )
    ledger.record(
        key="x1", policy_name="other", kind="train", tokens=77777, joules=1.0, method="estimated"
    )
    return pending.id, c2.id


def test_status_json(env: Env) -> None:
    pending_id, last_cycle = fill_status(env)
    rc, out = env.cli("status", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["policy"] == "tiny"
    assert data["champion"]["version"] == 2
    assert data["champion"]["valid_bpb"] == 3.5
    assert data["champion"]["recent_bpb"] == 3.25
    assert data["previous"] == 1
    assert data["last_cycle"]["id"] == last_cycle == "tiny-c0002"
    assert data["last_cycle"]["status"] == "failed"
    assert data["last_cycle"]["trigger"] == "drift"
    assert data["last_cycle"]["finished_at"]
    today = data["today"]
    assert today["tokens"] == 1500  # today's rows of this policy only
    assert today["joules"] == 50.2  # rounded to 0.1 J
    assert today["energy_method"] == "measured+estimated"
    budgets = load_policy(TINY_POLICY).budgets
    assert today["training_tokens_budget"] == budgets.training_tokens_per_day
    assert today["energy_kwh_budget"] == budgets.energy_kwh_per_day
    assert data["daemon"] is None
    assert data["pending_approvals"] == [{"id": pending_id, "cycle": "tiny-c0002", "version": 3}]


def test_status_json_on_an_empty_store(env: Env) -> None:
    rc, out = env.cli("status", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["policy"] == "tiny"
    assert data["champion"] is None and data["previous"] is None
    assert data["last_cycle"] is None and data["daemon"] is None
    assert data["today"]["tokens"] == 0 and data["pending_approvals"] == []


def test_status_text(env: Env) -> None:
    pending_id, _ = fill_status(env)
    env.book.publish_state(
        POLICY,
        pid=os.getpid(),  # a live process with a fresh heartbeat reads as a running daemon
        heartbeat_at=utcnow_iso(),
        serving_url="http://127.0.0.1:8000",
        served_version=2,
        energy_source="cpu",
    )
    rc, out = env.cli("status")
    assert rc == 0
    assert "champion:    v2  (recent 3.2500 bits/byte)" in out
    assert "last cycle:  tiny-c0002 failed" in out
    assert "today:       1,500 tokens, 50 J (measured+estimated)" in out
    assert f"daemon:      pid {os.getpid()}" in out
    assert "serving v2 at http://127.0.0.1:8000/v1" in out
    assert "next cycle:  on new data / not scheduled" in out
    assert f"approval {pending_id}: v3 from tiny-c0002 is waiting" in out
    # a stale heartbeat is not a running daemon
    env.book.publish_state(POLICY, heartbeat_at="2026-01-01T00:00:00.000000Z")
    rc, out = env.cli("status")
    assert "daemon:      not running (last heartbeat 2026-01-01T00:00:00.000000Z)" in out


def test_rollback_to_current_champion_is_refused(env: Env) -> None:
    for n in (1, 2):
        assert env.register(n) == n
    env.promote(1)
    env.promote(2)
    rc, out = env.cli("rollback", "--to", "2")
    assert rc == 1 and "already the champion" in out
    refused = [e for e in env.audit.events(agent="operator") if e.outcome == "refused"]
    assert refused and "already the champion" in refused[-1].reason


def test_audit_limit_must_be_positive(env: Env) -> None:
    with pytest.raises(SystemExit):
        env.cli("audit", "--limit", "0")


def test_report_by_cycle_day_model_csv_json(env: Env, tmp_path: Path) -> None:
    assert env.register(1) == 1
    with env.store.session() as s:
        from adapters.store.tables import ModelVersionRow

        row = s.exec(select(ModelVersionRow)).first()
        assert row is not None
        row.cycle_id = "tiny-c0001"
        s.add(row)
        s.commit()
    led = Ledger(env.store)
    led.record(
        key="t0",
        policy_name=POLICY,
        kind="train",
        tokens=1000,
        joules=10,
        method="estimated",
        cycle_id="tiny-c0001",
        day="2026-01-01",
    )
    led.record(
        key="t1",
        policy_name=POLICY,
        kind="train",
        tokens=3000,
        joules=10,
        method="measured",
        cycle_id="tiny-c0001",
        day="2026-01-02",
    )
    led.record(
        key="e0",
        policy_name=POLICY,
        kind="eval",
        tokens=500,
        joules=5,
        method="estimated",
        cycle_id="tiny-c0001",
        day="2026-01-02",
    )
    led.record(
        key="s0",
        policy_name=POLICY,
        kind="serve",
        tokens=42,
        joules=0,
        method="unmetered",
        model_version=1,
        day="2026-01-02",
    )
    rc, out = env.cli("report", "--by", "cycle", "--json")
    rows = {r["key"]: r for r in json.loads(out)}
    c1 = rows["tiny-c0001"]
    assert (c1["train_tokens"], c1["eval_tokens"], c1["joules"]) == (4000, 500, 25)
    assert c1["train_tokens_per_joule"] == 200 and c1["energy"] == "measured+estimated"
    assert rows["(serving)"]["serve_tokens"] == 42
    rc, out = env.cli("report", "--by", "model", "--json")
    v1 = {r["key"]: r for r in json.loads(out)}["v1"]
    assert v1["train_tokens"] == 4000 and v1["serve_tokens"] == 42
    rc, out = env.cli("report", "--by", "day", "--json")
    assert [r["key"] for r in json.loads(out)] == ["2026-01-01", "2026-01-02"]
    target = tmp_path / "ledger.csv"
    assert env.cli("report", "--csv", str(target))[0] == 0
    lines = target.read_text().splitlines()
    assert lines[0].startswith("key,train_tokens") and len(lines) == 3
    rc, out = env.cli("report")
    assert rc == 0 and "tiny-c0001" in out and "measured+estimated" in out


def test_several_lines_need_line_and_an_approval_names_its_own(env: Env) -> None:
    for name in ("a", "b"):
        env.book.save_policy(parse_policy(f"name: {name}"), f"{name}.yaml")
    approval = env.book.request_approval("b", "b-c0001", 1)
    base = ["--db", env.db_url, "--state-dir", str(env.state_dir)]
    with pytest.raises(SystemExit, match="several production lines"):
        main(["rollback", *base])  # never a guess: the default policy's line is not meant
    assert main(["models", "--line", "b", *base]) == 0
    with pytest.raises(SystemExit, match="no production line 'c'"):
        main(["models", "--line", "c", *base])
    # no line needed, even with a policy file that cannot be read
    assert main(["approve", str(approval.id), "--policy", "/nonexistent.yaml", *base]) == 0
    assert env.book.approvals("b")[0].status == "approved"
