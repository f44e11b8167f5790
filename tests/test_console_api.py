"""The console's JSON API over a filled store, in-process (every endpoint, the refusals,
the actions and their audit events), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from console_fill import Filled, fill_factory
from fastapi.testclient import TestClient
from test_serving import _model

from adapters.serving import ServingServer
from adapters.serving_guard import RequestGuard
from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.store.rollouts import RolloutBook
from controller.console.app import ConsoleDeps, build_console_app
from controller.console.guard import ConsoleError, Gate
from controller.console.refusals import MANY_CLIENTS
from controller.console.server import plotly_js
from controller.console.tokens import TokenError, TokenSource, load_tokens, parse_tokens
from controller.operator_actions import ActionRefused, OperatorActions
from controller.queries import Queries

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"


@dataclass
class Console:
    client: TestClient
    store: Store
    filled: Filled
    said: list[str]

    def post(self, path: str, token: str | None = ALICE, **body: object) -> object:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.post(f"/api/v1{path}", json=body or {"reason": "test"}, headers=headers)

    def get(self, path: str, token: str | None = None) -> object:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(f"/api/v1{path}", headers=headers)

    def events(self, **filters: object) -> list:
        return AuditLog(self.store).events(**filters)


def _console(
    db_url: str, tmp_path: Path, reads_open: bool, serving: Any = None
) -> Iterator[Console]:
    store = Store(db_url)
    store.create_all()
    filled = fill_factory(store, tmp_path)
    queries = Queries(store, filled.models_dir)
    said: list[str] = []
    tokens = TokenSource("X", f"ops-alice:{ALICE},ops-bob:{BOB}", tmp_path)
    gate = Gate(tokens, reads_open, queries.audit.append, said.append)
    deps = ConsoleDeps(
        queries, OperatorActions(queries.registry, queries.audit), gate, serving, plotly_js()
    )
    with TestClient(build_console_app(deps), base_url="http://127.0.0.1:8001") as client:
        yield Console(client, store, filled, said)
    store.dispose()


@pytest.fixture
def console(db_url: str, tmp_path: Path) -> Iterator[Console]:
    yield from _console(db_url, tmp_path, reads_open=True)


@pytest.fixture
def closed_console(tmp_path: Path) -> Iterator[Console]:
    """Bound to a non-loopback address: reads need a token too (SQLite is enough)."""
    yield from _console(f"sqlite:///{tmp_path / 'c.db'}", tmp_path, reads_open=False)


# reads ----------------------------------------------------------------------------------


def test_factory_shows_every_line_with_champion_budgets_and_approvals(console: Console) -> None:
    body = console.get("/factory").json()
    lines = {ln["policy"]: ln for ln in body["lines"]}
    assert set(lines) == {"tiny", "other"}
    tiny = lines["tiny"]
    assert tiny["champion"]["version"] == 2 and tiny["previous"] == 1
    assert tiny["pending_approvals"] == [
        {"id": console.filled.approval_id, "cycle": console.filled.cycles["tiny"][2], "version": 3}
    ]
    assert tiny["today"]["tokens"] == 400_000 * 6 and tiny["today"]["energy_method"] == "estimated"
    assert tiny["paused"] is None
    assert console.get("/lines/other").json()["champion"] is None


def test_models_cycles_trials_report_rollouts(console: Console) -> None:
    models = console.get("/lines/tiny/models").json()["models"]
    assert [m["version"] for m in models] == [1, 2, 3]
    assert models[1]["aliases"] == ["champion"] and models[0]["aliases"] == ["previous"]
    assert models[2]["tokens_per_joule"] == pytest.approx(400_000 * 3 / 450.0, rel=1e-3)
    one = console.get("/lines/tiny/models/2").json()
    assert {(h["alias"], h["to"]) for h in one["alias_history"]} >= {("champion", 2)}

    cycles = console.get("/lines/tiny/cycles?limit=2").json()["cycles"]
    assert [c["id"] for c in cycles] == console.filled.cycles["tiny"][:0:-1]
    assert cycles[0]["energy_label"] == "estimated" and cycles[0]["tokens_per_joule"] > 0

    trials = console.get(f"/cycles/{cycles[0]['id']}/trials").json()["trials"]
    assert len(trials) == 3 and sum(t["on_front"] for t in trials) == 2
    assert all(t["valid_bpb"] and t["energy_cost"] for t in trials)

    rows = console.get("/lines/tiny/report?by=model").json()["rows"]
    assert {r["key"] for r in rows} == {"v1", "v2", "v3"}

    rollout = console.get("/lines/tiny/rollouts").json()["rollouts"][0]
    assert rollout["status"] == "promoted" and rollout["challenger_version"] == 2
    weights = [h["weight_pct"] for h in rollout["history"] if h["action"] == "canary_weight"]
    assert weights == [5.0, 25.0, 50.0]
    assert console.get("/lines/tiny/live").json() == {"versions": []}  # no serving here
    assert {ln["key"] for ln in console.get("/report/lines").json()["lines"]} == {"tiny", "other"}


def test_audit_filters_and_chain_status(console: Console) -> None:
    events = console.get("/audit?line=tiny&action=canary_weight").json()["events"]
    assert len(events) == 3 and {e["agent"] for e in events} == {"deployer"}
    latest = console.get("/audit?limit=1").json()["events"]
    assert len(latest) == 1 and latest[0]["action"] == "judge"
    assert console.get("/audit/verify").json() == {
        "ok": True,
        "events": len(console.events()),
        "first_bad_seq": None,
        "problem": None,
    }
    pending = console.get("/approvals?status=pending").json()["approvals"]
    assert [a["id"] for a in pending] == [console.filled.approval_id]


def test_bad_requests_get_json_errors(console: Console) -> None:
    cases = [
        ("/lines/nope", 404, "not_found"),
        ("/lines/tiny/models/99", 404, "not_found"),
        ("/cycles/nope/trials", 404, "not_found"),
        ("/audit?limit=0", 400, "invalid_request"),
        ("/lines/tiny/report?by=year", 400, "invalid_request"),
        ("/approvals?status=maybe", 400, "invalid_request"),
        ("/no/such/thing", 404, "not_found"),
    ]
    for path, status, code in cases:
        res = console.get(path)
        assert (res.status_code, res.json()["error"]["code"]) == (status, code), path
    res = console.client.delete("/api/v1/factory")
    assert res.status_code == 405 and res.json()["error"]["code"] == "method_not_allowed"
    res = console.client.post(
        "/api/v1/approvals/1/approve",
        content=b"{not json",
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
    )
    assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_request"


def test_a_rebound_host_name_cannot_read_the_open_console(console: Console) -> None:
    res = console.client.get("/api/v1/factory", headers={"Host": "evil.example:8001"})
    assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden_host"
    assert (
        console.client.get("/api/v1/factory", headers={"Host": "localhost:8001"}).status_code == 200
    )


# who may act --------------------------------------------------------------------------


def test_every_write_without_a_token_is_refused_and_audited(console: Console) -> None:
    aid = console.filled.approval_id
    writes = [
        f"/approvals/{aid}/approve",
        f"/approvals/{aid}/reject",
        "/lines/tiny/rollback",
        "/lines/tiny/rollout/continue",
        "/lines/tiny/rollout/abort",
        "/lines/tiny/pause",
        "/lines/tiny/resume",
    ]
    for token in (None, "wrong-token-0123456789"):
        for path in writes:
            res = console.post(path, token=token)
            assert res.status_code == 401, path
            assert res.headers["WWW-Authenticate"] == "Bearer"
            assert res.json()["error"]["code"] == "unauthorized"
    assert console.get("/whoami").status_code == 401
    refused = console.events(agent="console")
    # the first refusal is an event at once; the flood after it is summed, not copied
    assert refused and refused[0].action == "unauthorized" and refused[0].outcome == "refused"
    assert "POST /api/v1/approvals" in refused[0].reason and "no bearer token" in refused[0].reason
    assert any("refused" in line for line in console.said)
    # nothing was acted on
    assert CycleBook(console.store).approvals("tiny", "pending")[0].id == aid
    assert console.get("/lines/tiny").json()["champion"]["version"] == 2


def test_a_burst_of_refusals_is_written_whole_even_when_nothing_follows(
    tmp_path: Path,
) -> None:
    """The first refusal is an event at once; those after it within the gap are summed
    into one later event, written by the gate itself, not left for a next refusal."""
    events: list[dict[str, Any]] = []
    tokens = TokenSource("X", f"ops-alice:{ALICE}", tmp_path)
    gate = Gate(tokens, True, lambda **e: events.append(e), lambda _: None, refusal_gap_s=0.3)

    def refuse(token: str | None, client: str = "10.0.0.9") -> None:
        header = f"Bearer {token}" if token else None
        with pytest.raises(ConsoleError):
            gate.operator(header, "POST", "/api/v1/lines/tiny/pause", client)

    refuse(None)
    refuse("wrong-token-0123456789")
    refuse("wrong-token-0123456789")
    assert [e["figures"]["count"] for e in events] == [1]
    deadline = time.monotonic() + 5
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["figures"]["count"] for e in events] == [1, 2]
    assert "a token that is not known (2 refusals" in events[1]["reason"]
    # a stopping console writes what it holds at once
    refuse(None, "10.0.0.7")
    refuse(None, "10.0.0.7")
    gate.close()
    assert [e["figures"]["client"] for e in events[2:]] == ["10.0.0.7", "10.0.0.7"]
    assert events[-1]["figures"]["count"] == 1
    assert gate.operator(f"Bearer {ALICE}", "POST", "/x", "10.0.0.7") == "ops-alice"


def test_a_scan_from_many_clients_is_bounded_and_summed(tmp_path: Path) -> None:
    """Past the bound of events a gap, refusals from every client are held under one shared
    key and written as one event by the same flush, whatever addresses they came from."""
    events: list[dict[str, Any]] = []
    tokens = TokenSource("X", f"ops-alice:{ALICE}", tmp_path)
    gate = Gate(
        tokens, True, lambda **e: events.append(e), lambda _: None, 0.3, max_events_per_gap=5
    )
    for i in range(40):
        with pytest.raises(ConsoleError):
            gate.operator(None, "POST", "/api/v1/lines/tiny/pause", f"10.1.0.{i}")
    assert [e["figures"]["client"] for e in events] == [f"10.1.0.{i}" for i in range(5)]
    deadline = time.monotonic() + 5
    while len(events) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # nothing more follows
    assert len(events) == 6
    many = events[5]
    assert many["figures"]["client"] == MANY_CLIENTS and many["figures"]["count"] == 35
    assert "35 refusals from many clients" in many["reason"] and "10.1.0.39" in many["reason"]
    assert sum(e["figures"]["count"] for e in events) == 40
    # a client written before that comes back within its gap is summed as before; on close,
    # what a full gap cannot take joins the shared sum, and nothing is lost
    for i in range(8):
        with pytest.raises(ConsoleError):
            gate.operator(None, "POST", "/x", f"10.2.0.{i}")
    gate.close()
    assert sum(e["figures"]["count"] for e in events) == 48
    assert all(e["action"] == "unauthorized" for e in events)


def test_reads_need_a_token_off_loopback(closed_console: Console) -> None:
    assert closed_console.get("/factory").status_code == 401
    assert closed_console.get("/factory", token=BOB).status_code == 200
    assert closed_console.get("/whoami", token=BOB).json() == {"name": "ops-bob"}


def test_approve_names_the_operator_in_the_audit_log(console: Console) -> None:
    aid = console.filled.approval_id
    res = console.post(f"/approvals/{aid}/approve", reason="looks right")
    assert res.status_code == 200 and res.json()["approval"]["status"] == "approved"
    row = CycleBook(console.store).approvals("tiny")[-1]
    assert (row.status, row.decided_by, row.reason) == ("approved", "ops-alice", "looks right")
    event = console.events(agent="operator")[-1]
    assert event.action == "approve" and event.line == "tiny"
    assert (
        event.reason == "ops-alice approved v3: looks right" and event.figures["by"] == "ops-alice"
    )
    again = console.post(f"/approvals/{aid}/reject", token=BOB)
    assert again.status_code == 409 and "already approved" in again.json()["error"]["message"]
    assert console.post("/approvals/999/approve").status_code == 404


def test_rollback_rollout_and_pause(console: Console) -> None:
    res = console.post("/lines/tiny/rollback", reason="bad answers")
    assert res.status_code == 200 and res.json()["champion"] == 1
    refused = console.post("/lines/tiny/rollback", to=1, reason="again")
    assert (
        refused.status_code == 409 and "already the champion" in refused.json()["error"]["message"]
    )
    assert [e.outcome for e in console.events(action="rollback")] == ["taken", "refused"]

    assert console.post("/lines/tiny/rollout/abort").status_code == 404  # nothing in progress
    RolloutBook(console.store).start(
        "tiny", "tiny-c9", champion=1, challenger=3, steps=[10.0], loss_sample_rate=0.0
    )
    assert console.post("/lines/tiny/rollout/continue").status_code == 409  # running, not paused
    assert console.post("/lines/tiny/rollout/abort", token=BOB).status_code == 200
    assert console.events(action="rollout_abort")[-1].figures["by"] == "ops-bob"

    assert console.post("/lines/tiny/pause", reason="maintenance").status_code == 200
    assert console.get("/lines/tiny").json()["paused"]["by"] == "ops-alice"
    assert console.post("/lines/tiny/pause").status_code == 409
    assert console.post("/lines/tiny/resume", token=BOB).status_code == 200
    assert console.get("/lines/tiny").json()["paused"] is None
    assert console.post("/lines/tiny/resume").status_code == 409
    assert console.post("/lines/nope/pause").status_code == 404


def test_live_view_of_a_routed_canary_gives_fractions(tmp_path: Path) -> None:
    """The endpoint says the challenger's share in %; the live view's shares are fractions,
    as the dashboard reads them: 10 % challenger, 90 % champion."""
    serving = ServingServer(port=0)
    champion, challenger = _model("A", 2, line="tiny"), _model("B", 3, line="tiny")
    serving.line("tiny").route(champion, challenger, 10.0)
    view = _console(f"sqlite:///{tmp_path / 'c.db'}", tmp_path, True, serving)
    console = next(view)
    try:
        versions = console.get("/lines/tiny/live").json()["versions"]
    finally:
        view.close()
    shares = {v["version"]: (v["role"], v["share"]) for v in versions}
    assert shares == {3: ("challenger", 0.1), 2: ("champion", 0.9)}


def test_a_console_body_never_sent_is_408_in_the_console_envelope() -> None:
    """The console's guard answers a body that does not arrive in time, with the error
    envelope every console answer has (code and message)."""
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])

    guard = RequestGuard(app, max_body_bytes=65_536, body_timeout_s=0.2)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/api/v1/lines/tiny/pause", "headers": []}
    started = time.monotonic()
    asyncio.run(guard(scope, receive, send))
    assert time.monotonic() - started < 5 and calls == []
    assert sent[0]["status"] == 408
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "request_timeout" and "0.2 seconds" in error["message"]


# what the page is made of ---------------------------------------------------------------


def test_openapi_spec_and_static_files(console: Console) -> None:
    spec = console.client.get("/openapi.json").json()
    assert "/api/v1/approvals/{approval_id}/{verb}" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    page = console.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    plotly = console.client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    for name in ("..%2Fapp.py", "app.py", "nope.js"):
        assert console.client.get(f"/static/{name}").status_code == 404


def test_tokens_file_is_made_private_and_others_refused(tmp_path: Path) -> None:
    tokens = load_tokens("AIFACTORY_CONSOLE_TOKENS", None, tmp_path)
    path = tmp_path / "console-tokens"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ((name, token),) = tokens.names
    assert name == "operator" and len(token) >= 32
    assert tokens.who(f"Bearer {token}") == "operator" and tokens.who("Bearer x" * 3) is None
    assert load_tokens("X", "", tmp_path).names == tokens.names  # same file, same token
    os.chmod(path, 0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        load_tokens("X", None, tmp_path)
    from_env = load_tokens("X", f"ops-alice:{ALICE}, ops-bob:{BOB}", tmp_path)
    assert from_env.who(f"Bearer {BOB}") == "ops-bob" and from_env.source == "$X"


def test_a_reversed_entry_is_named_by_its_place_not_its_text(tmp_path: Path) -> None:
    """TOKEN:name (the wrong way round) must not put the token in the log or the audit
    log: the problem names the entry by its place, and the gate audits the problem."""
    with pytest.raises(TokenError, match="entry 2") as err:
        parse_tokens(f"ops-bob:{BOB}\n{ALICE}:ops-alice\n", "tokens-file")
    assert ALICE not in str(err.value) and "ops-alice" not in str(err.value)
    with pytest.raises(TokenError, match="entry 3 has the name of entry 1") as err:
        parse_tokens(f"{ALICE}:{BOB},ops-bob:{BOB}, {ALICE}:{BOB}x", "$X")
    assert ALICE not in str(err.value) and BOB not in str(err.value)

    path = tmp_path / "console-tokens"
    path.write_text(f"ops-bob:{BOB}\n")
    os.chmod(path, 0o600)
    source = TokenSource("X", None, tmp_path)
    audited: list[dict[str, Any]] = []
    gate = Gate(source, True, lambda **e: audited.append(e), lambda _: None)
    path.write_text(f"ops-bob:{BOB}\n{ALICE}:ops-alice\n")
    with pytest.raises(ConsoleError):
        gate.operator(f"Bearer {BOB}", "POST", "/x", "127.0.0.1")
    gate.close()
    assert audited and all(ALICE not in str(e) for e in audited)
    assert any(e["action"] == "tokens_unusable" for e in audited)


def test_an_edit_that_keeps_the_times_is_still_seen(tmp_path: Path) -> None:
    """The reload stamp holds the size too: an edit within the clock's tick, which leaves
    the inode and times as they were, is not missed."""
    path = tmp_path / "console-tokens"
    path.write_text(f"ops-bob:{BOB}\n")
    os.chmod(path, 0o600)
    source = TokenSource("X", None, tmp_path)

    class SameTimes:  # the file as stat sees it, with times that never move
        def stat(self) -> Any:
            size = path.stat().st_size
            return SimpleNamespace(st_ino=1, st_mtime_ns=2, st_ctime_ns=3, st_size=size)

    source._path = SameTimes()  # type: ignore[assignment]
    source._stamp = source._read_stamp()
    assert source.current().who(f"Bearer {ALICE}") is None
    path.write_text(f"ops-bob:{BOB}\nops-alice:{ALICE}\n")
    assert source.current().who(f"Bearer {ALICE}") == "ops-alice"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice", "entry 1 must be NAME:TOKEN"),
        ("al ice:0123456789abcdefgh", "entry 1 must be NAME:TOKEN"),
        ("alice:short", "shorter than 16"),
        (f"a:{ALICE},a:{BOB}", "appears twice"),
        (" , ", "no token"),
    ],
)
def test_malformed_tokens_say_where_and_never_echo_a_token(text: str, problem: str) -> None:
    with pytest.raises(TokenError, match=problem) as err:
        parse_tokens(text, "$X")
    assert ALICE not in str(err.value) and BOB not in str(err.value)


def test_an_edited_tokens_file_takes_effect_and_a_bad_edit_refuses_every_token(
    tmp_path: Path,
) -> None:
    source = TokenSource("X", None, tmp_path)
    path = tmp_path / "console-tokens"
    ((_, first),) = source.current().names
    path.write_text(f"ops-alice:{ALICE}\n")  # the first token revoked, one added
    assert source.current().who(f"Bearer {first}") is None
    assert source.current().who(f"Bearer {ALICE}") == "ops-alice"
    path.write_text(f"ops-alice:{ALICE}\nops-bob:short\n")  # a typo: nothing goes
    assert source.current().who(f"Bearer {ALICE}") is None
    assert source.problem is not None and "shorter than 16" in source.problem
    path.unlink()  # gone: not made again behind the operator's back
    assert source.current().names == () and not path.exists()
    path.write_text(f"ops-bob:{BOB}\n")
    os.chmod(path, 0o600)
    assert source.current().who(f"Bearer {BOB}") == "ops-bob" and source.problem is None


def test_hostile_values_get_4xx_not_5xx(console: Console) -> None:
    for path in (
        "/audit?line=ti%00ny",
        "/audit?since=%00",
        "/approvals?line=%00",
        "/cycles/a%00b/trials",
        "/lines/tiny/models/2147483648",
        "/lines/tiny/cycles?limit=99999999999999999999",
    ):
        res = console.get(path)
        assert res.status_code == 400, (path, res.status_code, res.text)
        assert res.json()["error"]["code"] == "invalid_request"
    for path, body in (
        ("/approvals/2147483648/approve", {"reason": "x"}),
        ("/lines/tiny/rollback", {"reason": "x", "to": 2**63}),
        ("/lines/tiny/rollback", {"reason": "x", "to": 2**31}),
        ("/lines/tiny/rollback", {"reason": "x", "to": True}),
        ("/lines/tiny/rollback", {"reason": "x", "to": "1"}),
        ("/lines/tiny/rollback", {"reason": "x", "to": 1.0}),
        ("/approvals/true/approve", {"reason": "x"}),
        ("/lines/tiny/pause", {"reason": "nul \x00 here"}),
        ("/lines/tiny/pause", {"reason": "   "}),
        ("/lines/tiny/pause", {"reason": "x" * 2001}),
    ):
        res = console.post(path, **body)
        assert res.status_code == 400, (path, body, res.text)
    assert console.get("/lines/tiny").json()["paused"] is None
    assert console.get("/lines/tiny").json()["champion"]["version"] == 2  # nothing rolled back
    assert CycleBook(console.store).approvals("tiny", "pending")  # nor approved


def test_a_name_that_only_starts_like_loopback_is_refused(console: Console) -> None:
    for host in ("127.evil.example:8001", "127.0.0.1.nip.io", "localhost.evil"):
        res = console.client.get("/api/v1/factory", headers={"Host": host})
        assert res.status_code == 403, host
    assert console.client.get("/api/v1/factory", headers={"Host": "[::1]:8001"}).status_code == 200


def test_two_operators_at_the_same_instant_pause_or_resume_once(console: Console) -> None:
    actions = OperatorActions(
        Queries(console.store, console.filled.models_dir).registry, AuditLog(console.store)
    )

    def both(act: Any) -> list[str]:
        gate = threading.Barrier(2)

        def one(who: str) -> str:
            gate.wait()
            try:
                act("tiny", who, "at once")
            except ActionRefused as exc:
                return exc.kind
            return "done"

        with ThreadPoolExecutor(2) as pool:
            return sorted(pool.map(one, ["ops-alice", "ops-bob"]))

    assert both(actions.pause) == ["conflict", "done"]
    assert both(actions.resume) == ["conflict", "done"]
    assert [e.action for e in console.events(agent="operator")] == ["pause_line", "resume_line"]
    with pytest.raises(ActionRefused, match="1 to 128"):
        actions.pause("tiny", "x" * 129, "too long a name")
