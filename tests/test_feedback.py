"""Clients' feedback: signed completion ids, POST /v1/feedback, the store, the canary's and
the gates' use of ratings and corrections, and `aifactory feedback`."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import httpx
import pytest
from test_canary import SPEC, _judge
from test_e2e import cli
from test_serving import FakeGenerator

from adapters.completion_ids import CompletionIds
from adapters.serving import ServedModel, ServingServer
from adapters.serving_feedback import Feedback, FeedbackDesk
from adapters.store.db import Store
from adapters.store.factory_secret import factory_secret
from adapters.store.feedback import FeedbackLog
from agents.evaluator import Scores, check_metric_gates
from policies.model import MetricGate

# signed ids ---------------------------------------------------------------------------


def test_an_id_names_what_answered_and_a_forged_one_names_nothing() -> None:
    ids = CompletionIds(b"k" * 32)
    cid = ids.issue("chatcmpl", "line-a.b_1:v12")
    got = ids.read(cid)
    assert got is not None and (got.line, got.version) == ("line-a.b_1", 12)
    assert cid.startswith("chatcmpl-") and ids.read(ids.issue("cmpl", "m:v1")) is not None
    assert ids.read(cid.replace(":v12", ":v13")) is None  # another version edited in
    assert ids.read(cid[:-4] + "x:v12") is None  # another line
    assert CompletionIds(b"j" * 32).read(cid) is None  # another factory's key
    plain = ids.issue("cmpl", "m:v1")
    assert ids.read("chat" + plain) is None  # the kind is signed too: no second row per answer
    pinned = ids.issue("cmpl", "m:v1", routed=False)
    assert ids.read(pinned).routed is False and ids.read(plain).routed is True  # type: ignore[union-attr]
    at = len("cmpl-") + 24  # the routing flag: flipping it breaks the MAC
    assert pinned[at] == "p" and ids.read(pinned[:at] + "r" + pinned[at + 1 :]) is None
    for junk in ("", "cmpl-", "cmpl-zz.m:v1", "x" * 200, cid + "\n"):
        assert ids.read(junk) is None
    with pytest.raises(ValueError):
        ids.issue("embedding", "m:v1")


def test_every_member_signs_with_the_one_factory_secret(store: Store) -> None:
    other = Store(store.url)
    try:
        assert factory_secret(store, "completion-ids") == factory_secret(other, "completion-ids")
        assert factory_secret(store, "another") != factory_secret(store, "completion-ids")
    finally:
        other.dispose()


# the store ----------------------------------------------------------------------------


def test_feedback_is_keyed_by_the_answer_and_read_per_version(store: Store) -> None:
    log = FeedbackLog(store)
    log.record(Feedback("pinned", "m", 1, 0.25, routed=False))  # a client chose v1 itself
    assert log.record(Feedback("c1", "m", 1, 1.0)) is None
    assert log.record(Feedback("c1", "m", 1, 0.0, "better text")) == 1.0  # changed its mind
    log.record(Feedback("c2", "m", 2, 0.5))
    log.record(Feedback("c3", "other", 1, 1.0, "other line's fix"))
    assert log.ratings("m", [1, 2], "2000-01-01") == {1: [0.0], 2: [0.5]}
    assert log.ratings("m", [1, 2], "2999-01-01") == {1: [], 2: []}
    assert log.corrections("m") == ["better text"]
    summary = {(v.line, v.version): v for v in log.summary()}
    assert summary[("m", 1)].ratings == 2 and summary[("m", 1)].corrections == 1
    assert summary[("m", 2)].mean_rating == 0.5 and len(log.rows("m")) == 3


def test_the_same_answer_rated_at_once_by_two_members_is_one_row(store: Store) -> None:
    stores = [Store(store.url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def rate(s: Store, rating: float) -> None:
        barrier.wait()
        FeedbackLog(s).record(Feedback("same", "m", 1, rating))

    threads = [threading.Thread(target=rate, args=(s, i / 4)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.dispose()
    rows = FeedbackLog(store).rows("m")
    assert len(rows) == 1 and rows[0].rating in (0.0, 0.25, 0.5, 0.75)


# the endpoint -------------------------------------------------------------------------


class _Sink:
    def __init__(self, fail: bool = False) -> None:
        self.kept: dict[str, Feedback] = {}
        self.fail = fail

    def record(self, fb: Feedback) -> float | None:
        if self.fail:
            raise ConnectionError("store down")
        previous = self.kept.get(fb.completion_id)
        self.kept[fb.completion_id] = fb
        return previous.rating if previous else None


@pytest.fixture
def rated() -> tuple[ServingServer, _Sink]:
    sink = _Sink()
    srv = ServingServer(port=0, max_tokens_limit=8, feedback=FeedbackDesk(CompletionIds(), sink))
    srv.line("m").swap(ServedModel("m:v3", 3, FakeGenerator("hello", delay_s=0)))
    srv.start()
    yield srv, sink
    srv.stop()


def test_a_client_rates_an_answer_by_its_id(rated: tuple[ServingServer, _Sink]) -> None:
    srv, sink = rated
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        answer = c.post("/v1/completions", json={"model": "m", "prompt": "hi there"}).json()
        chat = c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        ).json()
        with c.stream(
            "POST", "/v1/completions", json={"model": "m", "prompt": "p", "stream": True}
        ) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: {"))
        streamed = json.loads(first[6:])["id"]
        ok = c.post("/v1/feedback", json={"id": answer["id"], "rating": 1})
        again = c.post("/v1/feedback", json={"id": answer["id"], "rating": 0, "correction": "hi"})
        c.post("/v1/feedback", json={"id": chat["id"], "rating": 0.5})
        c.post("/v1/feedback", json={"id": streamed, "rating": 1.0})
        metrics = c.get("/metrics").text
    assert ok.status_code == 200 and ok.json()["model"] == "m:v3" and ok.json()["replaced"] is None
    assert again.json()["replaced"] == 1.0
    kept = sink.kept[answer["id"]]
    assert (kept.line, kept.version, kept.rating, kept.correction) == ("m", 3, 0.0, "hi")
    assert sink.kept[chat["id"]].version == 3 and streamed in sink.kept
    assert 'aifactory_feedback_total{line="m",version="v3"} 4.0' in metrics
    assert 'aifactory_feedback_score{line="m",version="v3"} 0.625' in metrics
    assert 'aifactory_feedback_corrections_total{line="m",version="v3"} 1.0' in metrics
    assert 'aifactory_feedback_rate{line="m",version="v3"}' in metrics


def test_bad_feedback_gets_a_json_error_and_changes_nothing(
    rated: tuple[ServingServer, _Sink],
) -> None:
    srv, sink = rated
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        real = c.post("/v1/completions", json={"model": "m", "prompt": "hi there"}).json()["id"]
        forged = real.replace(":v3", ":v4")
        cases = {
            "forged id": ({"id": forged, "rating": 1}, 404),
            "unknown id": ({"id": "cmpl-123", "rating": 1}, 404),
            "rating above 1": ({"id": real, "rating": 2}, 400),
            "negative rating": ({"id": real, "rating": -0.1}, 400),
            "no rating": ({"id": real}, 400),
            "rating as text": ({"id": real, "rating": "great"}, 400),
            "correction too long": ({"id": real, "rating": 1, "correction": "x" * 70_000}, 400),
            "NUL in correction": ({"id": real, "rating": 1, "correction": "a\u0000b"}, 400),
            "escape in correction": ({"id": real, "rating": 1, "correction": "\u001b]0;x"}, 400),
            "rating as a string number": ({"id": real, "rating": "0.5"}, 400),
            "rating as a boolean": ({"id": real, "rating": True}, 400),
            "kind swapped": ({"id": "chat" + real, "rating": 1}, 404),
            "id too long": ({"id": "c" * 500, "rating": 1}, 400),
        }
        for what, (body, status) in cases.items():
            r = c.post("/v1/feedback", json=body)
            assert r.status_code == status, (what, r.text)
            assert r.json()["error"]["message"], what
        nan = c.post(
            "/v1/feedback",
            content=f'{{"id": "{real}", "rating": NaN}}',
            headers={"content-type": "application/json"},
        )
        assert nan.status_code == 400, nan.text
        garbage = c.post(
            "/v1/feedback", content=b"\xff{", headers={"content-type": "application/json"}
        )
        assert garbage.status_code == 400
    assert sink.kept == {}


def test_feedback_without_a_store_or_with_a_broken_one_is_a_503(server: ServingServer) -> None:
    server.line("m").swap(ServedModel("m:v1", 1, FakeGenerator("x", delay_s=0)))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        cid = c.post("/v1/completions", json={"model": "m", "prompt": "hi"}).json()["id"]
        nothing = c.post("/v1/feedback", json={"id": cid, "rating": 1})
        server.feedback.sink = _Sink(fail=True)
        broken = c.post("/v1/feedback", json={"id": cid, "rating": 1})
        server.feedback.sink = _Sink()
        server.feedback._writes = threading.BoundedSemaphore(1)
        server.feedback._writes.acquire()  # as many writes in flight as allowed
        busy = c.post("/v1/feedback", json={"id": cid, "rating": 1})
    assert nothing.status_code == 503 and nothing.json()["error"]["code"] == "no_feedback"
    assert broken.status_code == 503 and "send it again" in broken.json()["error"]["message"]
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "feedback_busy"


def test_an_answer_from_one_member_is_rated_through_another(store: Store) -> None:
    """Each member has its own store connections; the signing key is the factory's."""
    other = Store(store.url)
    servers = []
    for s in (store, other):
        desk = FeedbackDesk(CompletionIds(factory_secret(s, "completion-ids")), FeedbackLog(s))
        srv = ServingServer(port=0, max_tokens_limit=8, feedback=desk)
        srv.line("m").swap(ServedModel("m:v2", 2, FakeGenerator("hi", delay_s=0)))
        srv.start()
        servers.append(srv)
    try:
        with httpx.Client(timeout=10) as c:
            body = {"model": "m", "prompt": "hello there"}
            cid = c.post(f"{servers[0].url}/v1/completions", json=body).json()["id"]
            rated = c.post(f"{servers[1].url}/v1/feedback", json={"id": cid, "rating": 0.5})
        assert rated.status_code == 200 and rated.json()["model"] == "m:v2"
        assert [r.completion_id for r in FeedbackLog(store).rows("m")] == [cid]
    finally:
        for srv in servers:
            srv.stop()
        other.dispose()


# the canary and the gates -------------------------------------------------------------


def test_a_challenger_clients_rate_worse_fails_the_step_with_the_figures() -> None:
    good, bad = [1.0] * 18 + [0.0] * 2, [1.0] * 6 + [0.0] * 14
    outcome, reason, figures = _judge(ratings=(good, bad))
    assert outcome == "fail" and "clients rate it worse" in reason
    assert figures["champion_rating"] == 0.9 and figures["challenger_rating"] == 0.3
    assert figures["rating_drop_bounds"][0] > SPEC.max_feedback_drop  # type: ignore[index]
    assert figures["rating_confidence"] == 0.98  # 10% spread over 3 steps and 2 extensions


def test_few_or_similar_ratings_never_hold_a_step_up() -> None:
    outcome, _, figures = _judge(ratings=([1.0] * 3, [0.0] * 3))
    assert outcome == "pass" and "not judged" in str(figures["feedback"])
    outcome, _, _ = _judge(ratings=([1.0] * 10, [0.9] * 10))  # identical ratings: not certain
    assert outcome == "pass"
    outcome, reason, figures = _judge(ratings=([1.0, 0.0] * 10, [0.0, 1.0] * 10))
    assert outcome == "pass" and "rating 0.50 vs 0.50" in reason, reason


def test_the_feedback_gate_waits_for_corrections_then_judges_them() -> None:
    gates = {"feedback_bpb": MetricGate(max_increase_pct=1.0)}
    fails, figures = check_metric_gates(Scores(2.0, 2.0), Scores(2.0, 2.0), gates)
    assert fails == [] and "too few corrections" in str(figures["feedback_bpb"])
    nan = Scores(2.0, 2.0, feedback_bpb=float("nan"))  # there were some: scoring failed
    fails, _ = check_metric_gates(nan, Scores(2.0, 2.0, feedback_bpb=2.0), gates)
    assert fails == ["feedback_bpb: candidate has no measured value"]
    fails, _ = check_metric_gates(Scores(2.0, 2.0, feedback_bpb=2.0), nan, gates)
    assert fails and "champion could not be measured" in fails[0]
    worse = Scores(2.0, 2.0, feedback_bpb=2.2)
    fails, figures = check_metric_gates(worse, Scores(2.0, 2.0, feedback_bpb=2.0), gates)
    assert fails and figures["feedback_bpb_change_pct"] == 10.0


# the CLI ------------------------------------------------------------------------------


def test_the_cli_lists_and_exports_feedback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.create_all()
    log = FeedbackLog(store)
    for i in range(5):
        log.record(Feedback(f"c{i}", "tiny", 1 + i % 2, i / 4, "fixed" if i == 0 else None))
    store.dispose()
    shown = cli("feedback", "--db", url)
    assert shown.returncode == 0 and "feedback per version" in shown.stdout, shown.stdout
    exported = json.loads(cli("feedback", "--db", url, "--json", "--limit", "2").stdout)
    assert len(exported["ratings"]) == 2 and exported["ratings"][0]["completion_id"] == "c4"
    assert {(v["version"], v["ratings"]) for v in exported["versions"]} == {(1, 3), (2, 2)}
    empty = cli("feedback", "--db", url, "--line", "nothing")
    assert "no feedback yet" in empty.stdout


def test_the_evaluator_scores_both_models_on_clients_corrections(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from controller.nodes.evaluator import EvaluatorNode, _Scorer
    from policies.model import Policy

    class _Log:
        def __init__(self, texts: list[str]) -> None:
            self.texts = texts

        def corrections(self, line: str) -> list[str]:
            return self.texts

    def evaluate(path: str, files: list[str]) -> SimpleNamespace:
        if path == "broken.pt" and "fixes" in files[0]:
            raise ValueError("cannot score")
        bpb = 3.0 if Path(files[0]).parent.name == "feedback" else 2.0
        return SimpleNamespace(bpb=bpb, tokens=10, chunk_bpb=[bpb])

    policy = Policy(name="m", gates={"feedback_min_corrections": 2}, data={"eval_max_bytes": 25})
    newest_first = ["newest fix", "older fix", "oldest fix, past the byte budget"]
    ctx = SimpleNamespace(
        name="m",
        policy=policy,
        feedback=_Log(newest_first),
        trials_dir=tmp_path / "trials",
        registry=SimpleNamespace(verified_path=lambda model: f"{model.name}.pt"),
        evaluate=evaluate,
        reporter=SimpleNamespace(info=lambda text: None),
    )
    with EvaluatorNode(ctx)._corrections() as path:  # type: ignore[arg-type]
        assert path is not None and Path(path).read_text() == "newest fix\nolder fix\n"
        scorer = _Scorer(ctx, ["recent"], ["reference"], path)  # type: ignore[arg-type]
        scores = scorer.scores(SimpleNamespace(version=2, name="good"))  # type: ignore[arg-type]
        assert scores is not None and scores.feedback_bpb == 3.0 and scorer.tokens == 30
    assert not Path(path).exists()  # lives for the evaluation only
    ctx.feedback = _Log(["just one"])  # fewer than the gates ask for
    with EvaluatorNode(ctx)._corrections() as path:  # type: ignore[arg-type]
        assert path is None
    scores = _Scorer(ctx, ["r"], ["f"]).scores(SimpleNamespace(version=2, name="good"))  # type: ignore[arg-type]
    assert scores is not None and scores.feedback_bpb is None
    failing = _Scorer(ctx, ["r"], ["f"], str(tmp_path / "fixes.txt"))  # type: ignore[arg-type]
    scores = failing.scores(SimpleNamespace(version=3, name="broken"))  # type: ignore[arg-type]
    assert scores is not None and math.isnan(scores.feedback_bpb)  # type: ignore[arg-type]
