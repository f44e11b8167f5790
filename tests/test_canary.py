"""Canary rollout pieces: the pure step judge, metric gates, traffic split, rollout store."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from test_serving import FakeGenerator

from adapters.serving import ServedModel, ServingServer
from adapters.store.db import Store
from adapters.store.rollouts import RolloutBook
from agents.canary import LiveFigures, judge_step, next_move
from agents.evaluator import EvalObservation, Scores, check_metric_gates, judge
from policies.model import MetricGate, Policy, RolloutPolicy

SPEC = RolloutPolicy(
    steps=[10, 50, 100],
    min_requests=20,
    min_loss_samples=8,
    max_error_rate_pct=1.0,
    max_latency_p99_increase_pct=50.0,
    max_online_loss_increase_pct=2.0,
)


def _live(n: int, failures: int = 0, latency: float = 10.0, jitter: float = 1.0) -> LiveFigures:
    rng = random.Random(n)
    return LiveFigures(n, failures, tuple(latency + rng.uniform(0, jitter) for _ in range(n)))


def _pairs(n: int, change_pct: float, noise: float = 0.01) -> list[tuple[float, float]]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        base = 2.0 + rng.uniform(-0.5, 0.5)
        out.append((base, base * (1 + change_pct / 100) + rng.uniform(-noise, noise)))
    return out


def _judge(**kw: object) -> tuple[str, str, dict[str, object]]:
    args: dict[str, object] = {
        "step": 0,
        "weight_pct": 10.0,
        "champion": _live(200),
        "challenger": _live(30),
        "champion_so_far": LiveFigures(),
        "paired_loss": _pairs(20, -3.0),
        "policy": SPEC,
    }
    args.update(kw)
    v = judge_step(**args)  # type: ignore[arg-type]
    return v.outcome, v.action.reason, v.action.figures


def test_healthy_step_passes_with_figures() -> None:
    outcome, reason, figures = _judge()
    assert outcome == "pass", reason
    assert figures["challenger_requests"] == 30 and figures["loss_samples"] == 20
    assert figures["online_loss_change_pct"] < 0 and "latency_p99_change_pct" in figures
    assert "step 1 (10% of traffic) passed" in reason


def test_errors_over_the_limit_fail_even_with_little_traffic() -> None:
    outcome, reason, figures = _judge(challenger=_live(5, failures=3))
    assert outcome == "fail" and "error rate" in reason
    assert figures["challenger_failures"] == 3


def test_few_requests_fail_only_when_the_limit_is_already_exceeded() -> None:
    # 1 failure in 5 requests: 1 is already more than 1% of the 20 a step needs -> fail;
    # with a 10% limit (2 of 20) the same evidence is not yet a verdict
    outcome, _, _ = _judge(challenger=_live(5, failures=1))
    assert outcome == "fail"
    spec = SPEC.model_copy(update={"max_error_rate_pct": 10.0})
    outcome, reason, _ = _judge(challenger=_live(5, failures=1), policy=spec)
    assert outcome == "inconclusive" and "5 challenger requests < 20" in reason


def test_slow_challenger_fails_on_p99() -> None:
    outcome, reason, figures = _judge(challenger=_live(40, latency=30.0))
    assert outcome == "fail" and "p97.5 latency" in reason  # 40 requests support p97.5
    assert figures["latency_p99_change_pct"] > 50 and figures["latency_quantile"] == 97.5


def test_absolute_latency_limit() -> None:
    spec = SPEC.model_copy(update={"max_latency_p99_ms": 5.0})
    outcome, reason, _ = _judge(policy=spec)
    assert outcome == "fail" and "> limit 5 ms" in reason


def test_online_loss_worse_fails_and_straddling_is_inconclusive() -> None:
    outcome, reason, figures = _judge(paired_loss=_pairs(30, +8.0))
    assert outcome == "fail" and "online loss" in reason
    lo, hi = figures["online_loss_change_bounds_pct"]  # type: ignore[misc]
    assert 2.0 < lo <= hi
    outcome, reason, _ = _judge(paired_loss=_pairs(10, +2.0, noise=0.2))
    assert outcome == "inconclusive" and "straddle" in reason


def test_a_prompt_the_challenger_cannot_score_fails_the_step() -> None:
    pairs = [*_pairs(10, -3.0), (2.0, float("inf"))]
    outcome, reason, _ = _judge(paired_loss=pairs)
    assert outcome == "fail" and "infinite loss" in reason


def test_too_few_samples_is_inconclusive_and_sampling_off_skips_the_check() -> None:
    outcome, reason, _ = _judge(paired_loss=_pairs(3, -5.0))
    assert outcome == "inconclusive" and "3 sampled prompts" in reason
    off = SPEC.model_copy(update={"loss_sample_rate": 0.0})
    outcome, _, figures = _judge(paired_loss=[], policy=off)
    assert outcome == "pass" and "loss_samples" not in figures


def test_full_weight_step_compares_with_champion_so_far() -> None:
    outcome, _, figures = _judge(
        weight_pct=100.0, champion=LiveFigures(), champion_so_far=_live(100)
    )
    assert outcome == "pass" and figures["champion_reference"] == "rollout so far"
    outcome, reason, _ = _judge(weight_pct=100.0, champion=LiveFigures())
    assert outcome == "inconclusive" and "no champion traffic" in reason


def test_next_move_follows_the_policy() -> None:
    assert next_move("pass", step=0, n_steps=3, extensions=0, policy=SPEC) == "advance"
    assert next_move("pass", step=2, n_steps=3, extensions=0, policy=SPEC) == "promote"
    assert next_move("fail", step=1, n_steps=3, extensions=0, policy=SPEC) == "rollback"
    assert next_move("inconclusive", step=0, n_steps=3, extensions=0, policy=SPEC) == "pause"
    ext = SPEC.model_copy(update={"on_inconclusive": "extend", "max_extensions": 1})
    assert next_move("inconclusive", step=0, n_steps=3, extensions=0, policy=ext) == "extend"
    assert next_move("inconclusive", step=0, n_steps=3, extensions=1, policy=ext) == "pause"
    go = SPEC.model_copy(update={"on_inconclusive": "proceed"})
    assert next_move("inconclusive", step=2, n_steps=3, extensions=0, policy=go) == "promote"


def test_rollout_policy_validation() -> None:
    with pytest.raises(ValueError, match="steps must rise"):
        RolloutPolicy(steps=[50, 10])
    with pytest.raises(ValueError):
        RolloutPolicy(steps=[0, 100])
    with pytest.raises(ValueError, match="at least one"):
        MetricGate()


# metric gates ------------------------------------------------------------------------


def test_metric_gates_absolute_and_relative() -> None:
    cand = Scores(
        2.0, 2.1, latency_ms_per_token=3.0, tokens_per_joule=100.0, energy_method="estimated"
    )
    champ = Scores(2.2, 2.1, latency_ms_per_token=2.0, tokens_per_joule=150.0)
    gates = {
        "latency_ms_per_token": MetricGate(max_increase_pct=25.0),
        "tokens_per_joule": MetricGate(min=50.0, max_decrease_pct=20.0),
        "recent_bpb": MetricGate(max=2.5, max_increase=0.0),
    }
    failures, figures = check_metric_gates(cand, champ, gates)  # type: ignore[arg-type]
    assert len(failures) == 2, failures
    assert any("latency_ms_per_token +50.00% > allowed +25.00%" in f for f in failures)
    assert any("tokens_per_joule (estimated) -33.33% > allowed -20.00%" in f for f in failures)
    assert figures["candidate_recent_bpb"] == 2.0 and figures["recent_bpb_change_pct"] < 0


def test_metric_gate_without_a_measurement_fails_and_without_champion_skips_change() -> None:
    failures, _ = check_metric_gates(
        Scores(2.0, 2.0), None, {"tokens_per_joule": MetricGate(min=1.0)}
    )
    assert failures == ["tokens_per_joule: candidate has no measured value"]
    failures, figures = check_metric_gates(
        Scores(2.0, 2.0, latency_ms_per_token=9.0),
        None,
        {"latency_ms_per_token": MetricGate(max_increase_pct=10.0)},
    )
    assert failures == [] and figures["latency_ms_per_token_change"].startswith("skipped")


def test_judge_refuses_a_slow_candidate_with_figures() -> None:
    policy = Policy(
        name="t",
        gates={
            "min_improvement_pct": 0.0,
            "bootstrap": {"enabled": False},
            "metrics": {"latency_ms_per_token": {"max_increase_pct": 20}},
        },
    )
    cand = Scores(2.0, 2.0, latency_ms_per_token=5.0, tokens_per_joule=10.0)
    champ = Scores(2.1, 2.0, latency_ms_per_token=2.0, tokens_per_joule=20.0)
    v = judge(EvalObservation(cand, champ), policy)
    assert not v.blessed and "latency_ms_per_token +150.00%" in v.action.reason
    assert v.action.figures["champion_tokens_per_joule"] == 20.0
    faster = Scores(2.0, 2.0, latency_ms_per_token=2.1, tokens_per_joule=19.0)
    assert judge(EvalObservation(faster, champ), policy).blessed


# traffic split -----------------------------------------------------------------------


def _post(client: httpx.Client, **body: object) -> httpx.Response:
    payload: dict[str, object] = {"model": "m", "prompt": "a prompt of some length"}
    payload.update(body)
    return client.post("/v1/completions", json=payload)


def test_traffic_split_windows_and_sampled_prompts(server: ServingServer) -> None:
    champ = ServedModel("m:v1", 1, FakeGenerator("one", delay_s=0))
    chall = ServedModel("m:v2", 2, FakeGenerator("two", delay_s=0, fail=True))
    server.line("m").route(champ, chall, 30.0, sample_rate=1.0)
    assert server.line("m").challenger is not None and server.line("m").challenger[1] == 30.0
    server.line("m").take_window()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        codes = [_post(c).status_code for _ in range(200)]
        pinned = _post(c, model="m:v1")
        missing = _post(c, model="m:v9")
        listed = {m["id"] for m in c.get("/v1/models").json()["data"]}
        health = c.get("/healthz").json()
    window = server.line("m").take_window()
    to_v2 = window.requests.get(2, 0)
    assert 30 <= to_v2 <= 90, to_v2  # ~30% of 200
    assert codes.count(500) == to_v2 == window.failures[2]
    assert window.requests[1] == 200 - to_v2 + 1 and window.failures.get(1, 0) == 0
    assert len(window.latencies_ms[1]) == window.requests[1]
    assert pinned.json()["model"] == "m:v1" and missing.status_code == 404
    assert len(window.prompts) == window.requests[1]  # only answered requests are sampled
    assert listed == {"m", "m:v1", "m:v2"}  # the line (what clients send) and pinned versions
    assert health["lines"]["m"]["canary"] == {"model": "m:v2", "weight_pct": 30.0}
    assert server.line("m").take_window().requests == {}  # a new window starts empty


def test_same_user_stays_on_one_model_and_swap_ends_the_canary(server: ServingServer) -> None:
    champ = ServedModel("m:v1", 1, FakeGenerator("one", delay_s=0))
    chall = ServedModel("m:v2", 2, FakeGenerator("two", delay_s=0))
    server.line("m").route(champ, chall, 50.0)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for user in ("alice", "bob", "carol", "dave"):
            seen = {_post(c, user=user).json()["model"] for _ in range(8)}
            assert len(seen) == 1, (user, seen)
        server.line("m").swap(champ)
        assert server.line("m").challenger is None
        assert {_post(c).json()["model"] for _ in range(20)} == {"m:v1"}
        assert _post(c, model="m:v2").status_code == 404
    with pytest.raises(ValueError):
        server.line("m").route(champ, chall, 150.0)


# rollout store (SQLite and PostgreSQL) -------------------------------------------------


def test_rollout_book_lifecycle(store: Store) -> None:
    book = RolloutBook(store)
    row = book.start(
        "p", "p-c0002", champion=1, challenger=2, steps=[10, 100], loss_sample_rate=0.5
    )
    again = book.start("p", "p-c0002", champion=1, challenger=2, steps=[1], loss_sample_rate=0.0)
    assert again.id == row.id and json.loads(again.steps) == [10, 100]
    assert book.active("p") is not None and book.active("q") is None
    with pytest.raises(ValueError, match="not paused"):
        book.decide("p", "continue", "alice", "go")
    book.update("p-c0002", step=1, weight_pct=100.0, status="paused", reason="too little traffic")
    decided = book.decide("p", "continue", "alice", "looks fine")
    assert decided.decision == "continue" and decided.decided_by == "alice"
    cleared = book.update("p-c0002", status="running", clear_decision=True)
    assert cleared.decision is None and cleared.weight_pct == 100.0
    book.update("p-c0002", status="promoted")
    assert book.active("p") is None
    with pytest.raises(LookupError):
        book.decide("p", "abort", "bob", "late")
    assert [r.status for r in book.recent("p")] == ["promoted"]


def test_prometheus_metrics_per_version_and_canary_share(server: ServingServer) -> None:
    champ = ServedModel("m:v1", 1, FakeGenerator("one", delay_s=0))
    chall = ServedModel("m:v2", 2, FakeGenerator("two", delay_s=0, fail=True))
    server.line("m").route(champ, chall, 25.0)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        _post(c, model="m:v1")
        _post(c, model="m:v2")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'aifactory_requests_total{line="m",version="v1"} 1.0' in text
    assert 'aifactory_request_failures_total{line="m",version="v2"} 1.0' in text
    assert 'aifactory_tokens_total{kind="completion",line="m",version="v1"}' in text
    assert 'aifactory_request_latency_seconds_count{line="m",version="v2"} 1.0' in text
    assert 'aifactory_traffic_share{line="m",role="challenger",version="v2"} 0.25' in text
    assert 'aifactory_traffic_share{line="m",role="champion",version="v1"} 0.75' in text
