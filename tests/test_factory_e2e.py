"""End to end: a factory of three tiny lines in one daemon (real training, real HTTP).

Each line trains, judges and promotes its own champion, served under its own name; the
shared budgets are allocated and audited; a broken edit of one line's policy is refused
while the others go on; kill -9 mid-cycle resumes every line without a duplicate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from test_e2e import ROOT, cli, daemon, wait_for

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.store.registry import ModelRegistry
from adapters.store.tables import AuditEventRow, LedgerRow, ModelVersionRow, TrialRunRow

pytestmark = pytest.mark.slow
LINES = ("a", "b", "c")


def _factory(tmp_path: Path) -> Path:
    """A copy of the tiny factory the test may edit."""
    src = ROOT / "tests" / "configs"
    dst = tmp_path / "factory"
    (dst / "lines").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    shutil.copy(src / "factory-tiny.yaml", dst / "factory.yaml")
    for name in LINES:
        shutil.copy(src / "lines" / f"{name}.yaml", dst / "lines" / f"{name}.yaml")
    return dst / "factory.yaml"


def _args(tmp_path: Path, factory: Path, *extra: str) -> list[str]:
    db = f"sqlite:///{tmp_path / 'state' / 'aifactory.db'}"
    return [
        "--factory",
        str(factory),
        "--state-dir",
        str(tmp_path / "state"),
        "--db",
        db,
        "--port",
        "0",
        "--tick-s",
        "0.5",
        *extra,
    ]


def test_factory_runs_three_lines_serves_each_and_audits_allocations(tmp_path: Path) -> None:
    factory = _factory(tmp_path)
    log = tmp_path / "daemon.log"
    with daemon(*_args(tmp_path, factory), log=log) as proc:
        store = Store(f"sqlite:///{tmp_path / 'state' / 'aifactory.db'}")
        store.create_all()
        book = CycleBook(store)
        registry = ModelRegistry(store, tmp_path / "state" / "models")

        def all_served() -> bool:
            states = [book.daemon_state(n) for n in LINES]
            return all(s is not None and s.served_version for s in states)

        wait_for(all_served, 240, "every line's champion served", log)
        # a broken edit of one line is refused; the others keep going
        broken = factory.parent / "lines" / "b.yaml"
        good_b = broken.read_text()
        broken.write_text(good_b + "\ntuning: {trials_per_cycle: -1}\n")
        url = book.daemon_state("a").serving_url  # type: ignore[union-attr]
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert {m["id"] for m in models} >= set(LINES)
        for name in LINES:
            r = httpx.post(
                f"{url}/v1/completions",
                json={"model": name, "prompt": "def ", "max_tokens": 4, "temperature": 0},
                timeout=30,
            )
            champion = registry.alias(name, "champion")
            assert r.status_code == 200 and r.json()["model"] == f"{name}:v{champion}"
        wait_for(
            lambda: any(
                e.action == "reload_policy" and e.outcome == "refused" and "b.yaml" in e.reason
                for e in AuditLog(store).events(agent="controller")
            ),
            30,
            "the broken edit refused",
            log,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    audit = AuditLog(store)
    assert audit.verify().ok
    allocations = [e for e in audit.events(agent="energy") if e.action == "allocate"]
    assert {e.reason.split(":", 1)[0] for e in allocations} == set(LINES)
    first = {e.line: e for e in reversed(allocations)}  # each line's first allocation
    assert "40% guarantee" in first["a"].reason and "20% guarantee" in first["b"].reason
    assert "guarantee" not in first["c"].reason  # c has none
    assert all("kwh" in json.dumps(e.figures).lower() for e in allocations)
    with store.session() as s:
        versions = list(s.exec(select(ModelVersionRow)))
    assert {v.policy_name for v in versions} == set(LINES)
    db = ["--db", str(store.url)]
    charge = json.loads(cli("report", "--by", "line", "--json", *db).stdout)
    assert {r["line"] for r in charge["lines"]} == set(LINES)
    assert {r["owner"] for r in charge["owners"]} == {"team-a", "team-b", "team-c"}
    for key in ("train_tokens", "eval_tokens", "joules"):
        assert charge["total"][key] == pytest.approx(sum(r[key] for r in charge["lines"]), abs=0.01)
    assert charge["total"]["train_tokens"] > 0
    status = json.loads(cli("status", "--json", *db).stdout)
    assert {s["policy"] for s in status["lines"]} == set(LINES)
    assert all(s["champion"] for s in status["lines"])
    assert all(s["today"]["training_tokens_budget"] for s in status["lines"])
    events = cli("audit", "--json", "--line", "b", *db).stdout.splitlines()
    assert events and all(json.loads(e)["line"] == "b" for e in events)
    models = cli("models", "--line", "c", "--json", *db)
    assert models.returncode == 0 and json.loads(models.stdout)
    missing = cli("models", "--line", "nope", *db)
    assert missing.returncode != 0 and "no production line" in missing.stderr
    store.dispose()


def test_kill9_mid_cycle_resumes_every_line_without_duplicates(tmp_path: Path) -> None:
    factory = _factory(tmp_path)
    db = f"sqlite:///{tmp_path / 'state' / 'aifactory.db'}"
    log = tmp_path / "daemon.log"
    store = Store(db)
    with daemon(*_args(tmp_path, factory, "--cycles", "1"), log=log) as proc:
        store.create_all()
        wait_for(lambda: sum(1 for _ in _trials(store)) >= 2, 180, "trials under way", log)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log2 = tmp_path / "daemon2.log"
    with daemon(*_args(tmp_path, factory, "--cycles", "1"), log=log2) as proc:
        assert proc.wait(400) == 0, log2.read_text()[-4000:]
    with store.session() as s:
        trials = list(s.exec(select(TrialRunRow)))
        versions = list(s.exec(select(ModelVersionRow)))
        ledger = list(s.exec(select(LedgerRow)))
        keys = [e.idem_key for e in s.exec(select(AuditEventRow)) if e.idem_key]
    assert len({t.key for t in trials}) == len(trials)
    assert all(t.status in ("complete", "failed", "pruned") for t in trials)
    per_line = {v.policy_name for v in versions}
    assert per_line == set(LINES), per_line
    assert len({(v.policy_name, v.version) for v in versions}) == len(versions)
    assert len({r.key for r in ledger}) == len(ledger)
    assert len(set(keys)) == len(keys)
    assert AuditLog(store).verify().ok
    store.dispose()


def test_lines_added_and_removed_while_running_and_a_crashing_line_stays_alone(
    tmp_path: Path,
) -> None:
    """Line `crash` (every trial raises) runs beside line `a`; then the factory file drops it
    and adds `b`: `crash` drains and leaves serving, `b` starts and serves, `a` goes on."""
    factory = _factory(tmp_path)
    lines = factory.parent / "lines"
    crash = (
        (lines / "a.yaml")
        .read_text()
        .replace("name: a", "name: crash\nworkload: crashy_workloads:Raises")
    )
    (lines / "crash.yaml").write_text(crash)
    factory.write_text(
        "name: f\nlimits: {slots: 2}\nlines:\n"
        "  - {policy: lines/a.yaml, owner: team-a}\n"
        "  - {policy: lines/crash.yaml, owner: team-x}\n"
    )
    log = tmp_path / "daemon.log"
    env = {"PYTHONPATH": str(ROOT / "tests")}
    with daemon(*_args(tmp_path, factory), log=log, env=env) as proc:
        store = Store(f"sqlite:///{tmp_path / 'state' / 'aifactory.db'}")
        store.create_all()
        book, audit = CycleBook(store), AuditLog(store)
        wait_for(lambda: book.completed_count("crash") >= 1, 180, "the crashing line's cycle", log)
        wait_for(lambda: (s := book.daemon_state("a")) and s.served_version, 180, "a served", log)
        failed = [e for e in audit.events(line="crash") if e.action == "run_trial"]
        assert failed and all(e.outcome == "failed" for e in failed)
        assert all(e.outcome == "taken" for e in audit.events(line="a") if e.action == "run_trial")
        time.sleep(1.1)  # a new mtime for the edit on coarse file systems
        factory.write_text(
            "name: f\nlimits: {slots: 2}\nlines:\n"
            "  - {policy: lines/a.yaml, owner: team-a}\n"
            "  - {policy: lines/b.yaml, owner: team-b}\n"
        )
        actions = lambda: {(e.action, e.line or e.figures.get("line")) for e in audit.events()}  # noqa: E731
        wait_for(lambda: ("remove_line", "crash") in actions(), 120, "crash drained", log)
        assert ("add_line", "b") in actions()
        wait_for(lambda: (s := book.daemon_state("b")) and s.served_version, 180, "b served", log)
        url = book.daemon_state("a").serving_url  # type: ignore[union-attr]
        ids = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
        assert {"a", "b"} <= ids and not any(i.startswith("crash") for i in ids)
        gone = httpx.post(f"{url}/v1/completions", json={"model": "crash", "prompt": "x"})
        assert gone.status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert AuditLog(store).verify().ok
    store.dispose()


def _trials(store: Store) -> list[TrialRunRow]:
    with store.session() as s:
        return list(s.exec(select(TrialRunRow)))
