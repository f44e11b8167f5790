"""Live monitoring: the server's sample of served prompts and the data agent's judgement."""

from __future__ import annotations

import random

import httpx
from test_serving import FakeGenerator

from adapters.serving import ServedModel, ServingServer, _Reservoir
from agents.live import LiveObservation, decide_live
from policies.model import Policy

POLICY = Policy(name="m", triggers={"live": {"min_prompts": 10}})


def _obs(**kw: object) -> LiveObservation:
    base: dict[str, object] = {
        "version": 3,
        "prompts": 50,
        "js_divergence": 0.001,
        "live_bpb": 2.0,
        "eval_bpb": 2.0,
        "capture": True,
        "sample_bytes": 10_000,
    }
    base.update(kw)
    return LiveObservation(**base)  # type: ignore[arg-type]


def test_traffic_like_the_training_data_is_no_drift_and_a_small_sample_says_nothing() -> None:
    assert decide_live(_obs(), POLICY) is None
    assert decide_live(_obs(prompts=5, js_divergence=0.9), POLICY) is None
    assert decide_live(_obs(sample_bytes=500, js_divergence=0.9), POLICY) is None  # too little


def test_drifted_prompts_or_a_worse_score_is_live_drift_with_the_figures() -> None:
    action = decide_live(_obs(js_divergence=0.05), POLICY)
    assert action is not None and action.outcome == "taken" and "JS=0.0500" in action.reason
    action = decide_live(_obs(live_bpb=2.4), POLICY)
    assert action is not None and action.figures["live_loss_increase_pct"] == 20.0
    assert "20.0% over its 2.000 on its own held-out text" in action.reason


def test_without_capture_live_drift_says_what_would_help() -> None:
    action = decide_live(_obs(js_divergence=0.05, capture=False), POLICY)
    assert action is not None and action.outcome == "deferred"
    assert "turn data.capture on" in action.reason


def test_the_sample_is_uniform_and_bounded() -> None:
    rng = random.Random(0)
    counts = [0] * 10
    for _ in range(400):
        sample = _Reservoir(rng, size=5)
        for i in range(10):
            sample.offer(str(i))
        assert len(sample.kept) == 5 and sample.seen == 10
        for item in sample.kept:
            counts[int(item)] += 1
    assert all(150 < c < 250 for c in counts), counts  # each kept half the time


def test_served_prompts_are_sampled_per_version_but_never_the_private_ones(
    server: ServingServer,
) -> None:
    server.line("m").swap(ServedModel("m:v1", 1, FakeGenerator("ok", delay_s=0)))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for i in range(12):
            c.post("/v1/completions", json={"model": "m", "prompt": f"prompt {i}"})
        c.post("/v1/completions", json={"model": "m", "prompt": "secret", "store": False})
    line = server.line("m")
    assert line.live_count(1) == 12
    sample = line.take_live_sample(1)
    assert len(sample) == 12 and "secret" not in sample and line.live_count(1) == 0
    line.publish_live(1, {"prompts": 12.0, "js_divergence": 0.25})
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'aifactory_live_js_divergence{line="m",version="v1"} 0.25' in metrics
