"""A real daemon's console: a line paused before the daemon starts holds its first cycle
back (audited); resumed through the console with an operator's token, the cycle runs to an
approval that the console gives, and the model is promoted under the token's name."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import httpx
from test_e2e import daemon, policy_file, wait_for

from adapters.store.audit import AuditLog
from adapters.store.db import Store
from adapters.store.registry import ModelRegistry
from controller.cli import main

_CONSOLE = re.compile(r"\[console\] (http://127\.0\.0\.1:\d+/)")


def console_url(log: Path) -> str | None:
    found = _CONSOLE.search(log.read_text()) if log.exists() else None
    return found.group(1) if found else None


def operator_token(state: Path) -> str:
    line = next(ln for ln in (state / "console-tokens").read_text().splitlines() if ln[:1] != "#")
    return line.split(":", 1)[1]


def test_pause_resume_and_approve_through_a_daemons_console(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pol = policy_file(tmp_path, **{"gates:": "approval: required\ngates:"})
    common = ["--policy", str(pol), "--state-dir", str(state)]
    assert main(["pause", *common, "--reason", "maintenance window", "--by", "ops-carol"]) == 0
    log = tmp_path / "daemon.log"
    with daemon(*common, "--port", "0", "--tick-s", "0.3", log=log) as proc:
        base = wait_for(lambda: console_url(log), 60, "console URL", log, proc)
        api = httpx.Client(base_url=base + "api/v1", timeout=30)
        skipped = wait_for(
            lambda: api.get("/audit", params={"action": "cycle_skipped"}).json()["events"],
            60,
            "the held-back cycle",
            log,
            proc,
        )
        assert "line paused by ops-carol (maintenance window)" in skipped[0]["reason"]
        assert api.get("/lines/tiny").json()["paused"]["by"] == "ops-carol"

        refused = api.post("/lines/tiny/resume", json={"reason": "done"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        auth = {"Authorization": f"Bearer {operator_token(state)}"}
        assert (
            api.post("/lines/tiny/resume", json={"reason": "done"}, headers=auth).status_code == 200
        )

        pending = wait_for(
            lambda: api.get("/approvals", params={"status": "pending"}).json()["approvals"],
            120,
            "approval",
            log,
            proc,
        )
        ok = api.post(
            f"/approvals/{pending[0]['id']}/approve", json={"reason": "fine"}, headers=auth
        )
        assert ok.status_code == 200, ok.text
        champion = wait_for(
            lambda: (api.get("/lines/tiny").json()["champion"] or {}).get("version"),
            60,
            "promotion",
            log,
            proc,
        )
        assert champion == 1
        status = api.get("/lines/tiny").json()
        assert status["daemon"]["console_url"] == base and status["paused"] is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    store = Store(f"sqlite:///{state / 'aifactory.db'}")
    audit = AuditLog(store)
    ops = [(e.action, e.figures.get("by")) for e in audit.events(agent="operator")]
    assert ops == [
        ("pause_line", "ops-carol"),
        ("resume_line", "operator"),
        ("approve", "operator"),
    ]
    refusals = audit.events(agent="console")
    assert refusals and "POST /api/v1/lines/tiny/resume" in refusals[0].reason
    trigger = [e for e in audit.events(agent="controller") if e.action == "cycle_skipped"]
    assert len(trigger) == 1
    assert ModelRegistry(store, state / "models").alias("tiny", "champion") == 1
    assert audit.verify().ok
    store.dispose()


def test_once_on_a_paused_line_waits_and_says_so_and_a_taken_console_port_is_no_stop(
    tmp_path: Path,
) -> None:
    """`--once` on a paused line holds its cycle (said and audited once) until resumed;
    a console port already taken leaves the daemon running without a console."""
    state = tmp_path / "state"
    common = ["--policy", str(policy_file(tmp_path)), "--state-dir", str(state)]
    assert main(["pause", *common, "--reason", "hold it", "--by", "ops-dan"]) == 0
    log = tmp_path / "daemon.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        args = [*common, "--port", "0", "--console-port", port, "--tick-s", "0.3", "--once"]
        with daemon(*args, log=log) as proc:
            wait_for(lambda: "held back" in log.read_text() or None, 60, "the hold", log, proc)
            assert "running without a console" in log.read_text()
            time.sleep(2.0)  # several idle turns of the line: still said only once
            assert proc.poll() is None
            assert main(["resume", *common, "--reason", "go", "--by", "ops-dan"]) == 0
            assert proc.wait(120) == 0
    store = Store(f"sqlite:///{state / 'aifactory.db'}")
    audit = AuditLog(store)
    held = [e for e in audit.events(agent="controller") if e.action == "cycle_skipped"]
    assert len(held) == 1 and "line paused by ops-dan (hold it)" in held[0].reason
    assert ModelRegistry(store, state / "models").alias("tiny", "champion") == 1
    store.dispose()
