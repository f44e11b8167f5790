"""Unit tests of the pure decision functions: no store, no clock, no model."""

from __future__ import annotations

import math

import pytest

from agents.data import DataObservation, decide_data
from agents.deployer import DeployObservation, decide_deploy
from agents.drift import byte_histogram, js_divergence
from agents.energy import J_PER_KWH, EnergyObservation, decide_energy
from agents.evaluator import EvalObservation, Scores, judge
from agents.trainer import TrialSummary, choose_candidate, distributions, warm_start_params
from policies import parse_policy
from policies.model import Policy


def policy(extra: str = "") -> Policy:
    return parse_policy("name: t\n" + extra)


# data -----------------------------------------------------------------------------------


def obs(**kw: object) -> DataObservation:
    base = dict(new_files=3, new_bytes=1000, quarantined=0, dataset_version="d1", has_champion=True)
    base.update(kw)
    return DataObservation(**base)  # type: ignore[arg-type]


def test_first_data_trains_initial_model() -> None:
    d = decide_data(obs(has_champion=False), policy())
    assert d.retrain and d.actions[0].outcome == "taken"
    assert "no champion" in d.actions[0].reason


def test_no_data_no_training() -> None:
    d = decide_data(obs(dataset_version=None, has_champion=False), policy())
    assert not d.retrain and d.actions[0].outcome == "deferred"


def test_no_new_files_no_training() -> None:
    d = decide_data(obs(new_files=0), policy())
    assert not d.retrain


def test_js_drift_triggers_with_figures() -> None:
    d = decide_data(obs(js_divergence=0.01), policy())
    assert d.retrain
    assert d.actions[0].figures["js_divergence"] == 0.01
    assert "JS=0.0100" in d.actions[0].reason


def test_loss_drift_triggers() -> None:
    d = decide_data(obs(js_divergence=0.001, champion_new_bpb=2.6, champion_ref_bpb=2.4), policy())
    assert d.retrain
    assert d.actions[0].figures["loss_increase_pct"] == pytest.approx(8.3333, abs=1e-3)


def test_small_shift_is_ingested_without_retraining() -> None:
    d = decide_data(obs(js_divergence=0.001, champion_new_bpb=2.41, champion_ref_bpb=2.4), policy())
    assert not d.retrain and d.actions[0].outcome == "deferred"
    assert "neither drift signal" in d.actions[0].reason


def test_retrain_on_new_data_flag() -> None:
    p = policy("triggers: {retrain_on_new_data: true}")
    assert decide_data(obs(js_divergence=0.0), p).retrain


def test_js_divergence_properties() -> None:
    a = byte_histogram([b"hello world" * 10])
    b = byte_histogram([b"\x01\x02\x03" * 10])
    assert js_divergence(a, a) == pytest.approx(0.0)
    assert js_divergence(a, b) == pytest.approx(1.0)
    c = byte_histogram([b"hello there"])
    assert 0 < js_divergence(a, c) < 1
    assert js_divergence(a, c) == pytest.approx(js_divergence(c, a))
    with pytest.raises(ValueError):
        js_divergence([0] * 256, a)


# energy ---------------------------------------------------------------------------------


def eobs(tokens: int = 0, joules: float = 0.0, jpt: float | None = None) -> EnergyObservation:
    return EnergyObservation(tokens, joules, jpt, "estimated")


def test_budget_below_one_trial_is_refused_before_training() -> None:
    p = policy("budgets: {training_tokens_per_day: 1000, tokens_per_trial: 5000}")
    d = decide_energy(eobs(), p)
    assert d.allowance is None
    a = d.actions[0]
    assert a.outcome == "refused"
    assert "training_tokens_per_day" in a.reason and a.figures["shortfall_tokens"] == 4000


def test_energy_budget_below_one_trial_is_refused() -> None:
    p = policy("budgets: {energy_kwh_per_day: 0.000001, tokens_per_trial: 100000}")
    d = decide_energy(eobs(jpt=0.01), p)  # 1000 J needed, 3.6 J allowed
    assert d.allowance is None and d.actions[0].outcome == "refused"
    assert d.actions[0].figures["shortfall_joules"] == pytest.approx(1000 - 3.6, abs=1e-6)


def test_spent_day_is_deferred() -> None:
    p = policy("budgets: {training_tokens_per_day: 1000000, tokens_per_trial: 400000}")
    d = decide_energy(eobs(tokens=700_000), p)
    assert d.allowance is None and d.actions[0].outcome == "deferred"
    assert d.actions[0].figures["shortfall_tokens"] == 100_000


def test_spent_energy_is_deferred() -> None:
    p = policy("budgets: {energy_kwh_per_day: 0.001, tokens_per_trial: 1000}")
    d = decide_energy(eobs(joules=0.001 * J_PER_KWH - 0.5, jpt=0.01), p)
    assert d.allowance is None and d.actions[0].outcome == "deferred"


def test_trials_trimmed_to_fit() -> None:
    p = policy(
        "budgets: {training_tokens_per_day: 1000000, tokens_per_trial: 400000}\n"
        "tuning: {trials_per_cycle: 5}"
    )
    d = decide_energy(eobs(), p)
    assert d.allowance is not None and d.allowance.trials == 2
    assert "trimmed" in d.actions[0].reason


def test_all_trials_fit() -> None:
    d = decide_energy(eobs(jpt=1e-3), policy())
    assert d.allowance is not None and d.allowance.trials == 3
    assert d.actions[0].figures["joules_per_token_basis"] == "estimated"


# trainer --------------------------------------------------------------------------------


def ts(key: str, status: str, bpb: float | None, path: str = "a.pt") -> TrialSummary:
    return TrialSummary(key, int(key[-1]), status, bpb, 10, 1.0, {"lr": 0.01}, path)


def test_candidate_is_best_finite_trial() -> None:
    best, action = choose_candidate(
        [
            ts("c:trial:0", "complete", 3.0),
            ts("c:trial:1", "complete", float("nan")),
            ts("c:trial:2", "failed", None),
            ts("c:trial:3", "complete", 2.5),
        ]
    )
    assert best is not None and best.key == "c:trial:3"
    assert action.figures["usable"] == 2 and action.figures["failed"] == 1


def test_no_usable_trial_is_refused() -> None:
    best, action = choose_candidate(
        [ts("c:trial:0", "complete", float("nan")), ts("c:trial:1", "failed", None)]
    )
    assert best is None and action.outcome == "refused"


def test_distributions_and_warm_start() -> None:
    p = policy(
        "tuning:\n  search_space:\n    lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
        "    batch_size: {type: categorical, choices: [8, 16]}\n"
        "    n_layers: {type: int, low: 1, high: 3}\n  fixed: {}"
    )
    d = distributions(p)
    assert set(d) == {"lr", "batch_size", "n_layers"}
    good = {"lr": 0.01, "batch_size": 16, "n_layers": 2, "d_model": 64}
    assert warm_start_params(good, p) == {"lr": 0.01, "batch_size": 16, "n_layers": 2}
    assert warm_start_params({"lr": 0.5, "batch_size": 16, "n_layers": 2}, p) is None
    assert warm_start_params({"lr": 0.01}, p) is None
    assert warm_start_params(None, p) is None
    # a champion trained at a batch today's device does not offer: no warm start, no crash
    assert warm_start_params({"lr": 0.01, "batch_size": 512, "n_layers": 2}, p) is None


# evaluator ------------------------------------------------------------------------------


def test_first_model_within_ceiling_is_blessed() -> None:
    v = judge(EvalObservation(Scores(3.0, 3.0), None), policy("gates: {max_bpb: 3.5}"))
    assert v.blessed and v.action.outcome == "taken"


def test_ceiling_refuses() -> None:
    v = judge(EvalObservation(Scores(3.6, 3.0), None), policy("gates: {max_bpb: 3.5}"))
    assert not v.blessed and "ceiling" in v.action.reason


def test_nan_candidate_is_never_blessed() -> None:
    for bad in (float("nan"), float("inf")):
        v = judge(EvalObservation(Scores(bad, 2.0), None), policy("gates: {max_bpb: 100}"))
        assert not v.blessed and "NaN" in v.action.reason
    assert not judge(EvalObservation(None, None), policy()).blessed


def test_improvement_gate() -> None:
    p = policy("gates: {max_bpb: 9, min_improvement_pct: 1.0}")
    assert not judge(EvalObservation(Scores(2.99, 2.4), Scores(3.0, 2.4)), p).blessed  # 0.33% < 1%
    v = judge(EvalObservation(Scores(2.9, 2.4), Scores(3.0, 2.4)), p)
    assert v.blessed and v.action.figures["improvement_pct"] == pytest.approx(3.3333, abs=1e-3)


def test_reference_regression_gate() -> None:
    p = policy("gates: {max_bpb: 9, min_improvement_pct: 0, max_reference_regression_pct: 5}")
    v = judge(EvalObservation(Scores(2.5, 2.7), Scores(3.0, 2.4)), p)
    assert not v.blessed and "reference data regresses" in v.action.reason
    assert math.isclose(v.action.figures["reference_regression_pct"], 12.5, rel_tol=1e-6)


# deployer -------------------------------------------------------------------------------


def test_deploy_paths() -> None:
    auto, manual = policy(), policy("approval: required")
    assert decide_deploy(DeployObservation(True, 2, 1), auto).step == "promote"
    assert decide_deploy(DeployObservation(False, 2, 1), auto).step == "hold"
    assert decide_deploy(DeployObservation(True, None, 1), auto).step == "hold"
    assert decide_deploy(DeployObservation(True, 2, 1), manual).step == "await_approval"
    assert decide_deploy(DeployObservation(True, 2, 1, approved=True), manual).step == "promote"
    rejected = decide_deploy(DeployObservation(True, 2, 1, approved=False), manual)
    assert rejected.step == "hold" and rejected.action.outcome == "refused"


def test_unscorable_champion_is_named_in_the_verdict() -> None:
    p = policy("gates: {max_bpb: 3.5, min_improvement_pct: 5}")
    v = judge(
        EvalObservation(Scores(3.0, 3.0), Scores(float("nan"), 2.0), champion_problem="NaN scores"),
        p,
    )
    assert v.blessed and "champion could not be scored (NaN scores)" in v.action.reason
    assert v.action.figures["champion_problem"] == "NaN scores"
    assert not judge(EvalObservation(Scores(3.6, 3.0), None, champion_problem="corrupt"), p).blessed


def test_advice_within_agent_token_budget() -> None:
    from agents.advisor import AdviceObservation, decide_advice

    p = policy("budgets: {agent_llm_tokens_per_day: 1000}\nadvisor: {model: m, max_tokens: 100}")
    ok = decide_advice(AdviceObservation(used_today=100, prompt_tokens_estimate=200), p)
    assert ok.outcome == "taken"
    no = decide_advice(AdviceObservation(used_today=900, prompt_tokens_estimate=200), p)
    assert no.outcome == "deferred" and no.figures["tokens_needed"] == 300
    assert "shortfall 200" in no.reason


# energy windows, cycle budgets, quality floor -------------------------------------------

WINDOWS = (
    "energy:\n  windows:\n"
    "    - {start_hour: 0, end_hour: 6, price_per_kwh: 0.08}\n"
    "    - {start_hour: 6, end_hour: 18, price_per_kwh: 0.30}\n"
    "    - {start_hour: 18, end_hour: 24, price_per_kwh: 0.20}\n"
)


def wobs(hour: float, bpb: float | None = None, deferred: float = 0.0) -> EnergyObservation:
    return EnergyObservation(
        0, 0.0, 1e-3, "estimated", hour_utc=hour, champion_new_bpb=bpb, deferred_h=deferred
    )


def test_deferrable_training_waits_for_cheapest_window() -> None:
    d = decide_energy(wobs(14.0), policy(WINDOWS))
    assert d.allowance is None and d.defer_for_h == pytest.approx(10.0)
    assert d.actions[0].outcome == "deferred" and "00-06 UTC window" in d.actions[0].reason


def test_in_cheapest_window_goes_now() -> None:
    d = decide_energy(wobs(2.0), policy(WINDOWS))
    assert d.allowance is not None and d.defer_for_h is None
    assert "in the 00-06 UTC window" in d.actions[-1].reason


def test_horizon_limits_the_wait() -> None:
    p = policy(WINDOWS + "  max_defer_h: 5\n")
    d = decide_energy(wobs(14.0), p)  # 00-06 is 10 h away; 18-24 (0.20) is 4 h away
    assert d.defer_for_h == pytest.approx(4.0)
    d = decide_energy(wobs(14.0, deferred=5.0), p)  # waited long enough already
    assert d.allowance is not None


def test_quality_floor_overrides_the_wait() -> None:
    p = policy(WINDOWS + "triggers: {quality_floor_bpb: 3.0}\n")
    d = decide_energy(wobs(14.0, bpb=3.4), p)
    assert d.allowance is not None
    assert d.actions[0].action == "wait_for_window" and "quality floor" in d.actions[0].reason
    assert decide_energy(wobs(14.0, bpb=2.9), p).allowance is None  # quality fine: wait


def test_carbon_windows() -> None:
    p = policy(
        "energy:\n  prefer_windows_by: carbon\n  max_defer_h: 16\n  windows:\n"
        "    - {start_hour: 10, end_hour: 16, carbon_g_per_kwh: 90}\n"
        "    - {start_hour: 16, end_hour: 24, carbon_g_per_kwh: 400}\n"
    )
    d = decide_energy(wobs(20.0), p)
    assert d.defer_for_h == pytest.approx(14.0)
    assert "carbon 90" in d.actions[0].reason


def test_cycle_budgets() -> None:
    p = policy(
        "budgets: {tokens_per_trial: 1000, training_tokens_per_cycle: 2500}\n"
        "tuning: {trials_per_cycle: 5}"
    )
    d = decide_energy(eobs(), p)
    assert d.allowance is not None and d.allowance.trials == 2
    assert d.allowance.tokens_left == 2500
    refused = decide_energy(
        eobs(), policy("budgets: {tokens_per_trial: 1000, training_tokens_per_cycle: 500}")
    )
    assert refused.actions[0].outcome == "refused"
    assert refused.actions[0].figures["budget"] == "training_tokens_per_cycle"


def test_window_policy_validation() -> None:
    from policies import PolicyError

    with pytest.raises(PolicyError):
        policy("energy:\n  windows:\n    - {start_hour: 20, end_hour: 4, price_per_kwh: 1}\n")
    with pytest.raises(PolicyError):
        policy("energy:\n  windows:\n    - {start_hour: 1, end_hour: 4}\n")


# trainer: energy objective, Pareto front, selection, pruning ------------------------------


def test_energy_cost_kinds() -> None:
    from agents.trainer import energy_cost

    q = policy("tuning: {objectives: {kind: quality_and_energy}}")
    assert energy_cost(q, tokens=1000, joules=50, seconds=2, max_power_w=700) == 0.05
    z = policy("tuning: {objectives: {kind: zeus_cost, eta: 0.5, max_power_w: 400}}")
    assert energy_cost(z, tokens=1000, joules=50, seconds=2, max_power_w=700) == pytest.approx(
        (0.5 * 50 + 0.5 * 400 * 2) / 1000
    )
    assert energy_cost(q, tokens=0, joules=5, seconds=1, max_power_w=1) is None


def tse(n: int, bpb: float, cost: float, status: str = "complete") -> TrialSummary:
    return TrialSummary(f"c:trial:{n}", n, status, bpb, 10, 1.0, {"n": n}, "a.pt", 1.0, cost)


def test_pareto_front_and_least_energy_selection() -> None:
    from agents.trainer import pareto_front

    trials = [
        tse(0, 3.00, 0.9),
        tse(1, 3.02, 0.5),
        tse(2, 3.10, 0.6),
        tse(3, 3.50, 0.2),
        tse(4, 2.90, 5.0, status="failed"),
    ]
    assert [t.number for t in pareto_front(trials)] == [0, 1, 3]
    p = policy("tuning: {selection: {rule: least_energy_within, quality_tolerance_pct: 1.0}}")
    best, action = choose_candidate(trials, p)
    assert best is not None and best.number == 1  # within 1% of 3.00, half the energy
    assert "44% less" in action.reason
    best, _ = choose_candidate(trials, policy())  # best_quality
    assert best is not None and best.number == 0


def test_should_prune_against_median_curve() -> None:
    from agents.trainer import loss_at, should_prune

    curve = [(0, 5.0), (100, 3.0), (200, 2.0)]
    assert loss_at(curve, 150) == pytest.approx(2.5)
    assert loss_at(curve, 300) is None
    p = policy(
        "tuning: {pruning: {enabled: true, startup_trials: 2, warmup_fraction: 0.25, "
        "margin_pct: 10}}"
    )
    earlier = [curve, [(0, 5.0), (100, 3.2), (200, 2.2)]]
    assert should_prune(150, 3.2, 200, earlier, p) == (True, pytest.approx(2.6))
    assert should_prune(150, 2.7, 200, earlier, p)[0] is False  # within the margin
    assert should_prune(40, 9.0, 200, earlier, p)[0] is False  # still warming up
    assert should_prune(150, 9.0, 200, earlier[:1], p)[0] is False  # too few to compare
    assert should_prune(150, float("nan"), 200, earlier, p)[0] is True
    assert should_prune(150, 9.0, 200, earlier, policy())[0] is False  # disabled


def test_pruning_needs_single_objective() -> None:
    from policies import PolicyError

    with pytest.raises(PolicyError, match="single"):
        policy("tuning: {objectives: {kind: zeus_cost}, pruning: {enabled: true}}")


def test_power_allocation_under_facility_cap() -> None:
    from agents.energy import PowerRequest, allocate_power_limits

    reqs = [
        PowerRequest("a", 700, 200, 700),
        PowerRequest("b", 300, 200, 700),
        PowerRequest("c", 700, 200, 700),
    ]
    limits = allocate_power_limits(1200, reqs)
    assert limits is not None and sum(limits.values()) == pytest.approx(1200)
    assert limits["b"] == pytest.approx(300)  # never above what it asked for
    assert limits["a"] == pytest.approx(450) and limits["c"] == pytest.approx(450)
    assert allocate_power_limits(500, reqs) is None  # minimums alone exceed the cap
    roomy = allocate_power_limits(5000, reqs)
    assert roomy == {"a": 700, "b": 300, "c": 700}


def test_paired_bootstrap_gate() -> None:
    import random

    from agents.evaluator import paired_bootstrap

    rng = random.Random(0)
    champ = tuple(3.0 + rng.gauss(0, 0.3) for _ in range(64))
    clear = tuple(c - 0.15 + rng.gauss(0, 0.02) for c in champ)  # ~5% better on every chunk
    # 0.5% better on average, but +-0.3 bits/byte either way chunk by chunk
    noisy = tuple(c - 0.015 + (0.3 if i % 2 else -0.3) for i, c in enumerate(champ))
    lower, mean = paired_bootstrap(champ, clear, confidence=0.95, resamples=2000, seed=0) or (0, 0)
    assert 4.0 < lower < mean < 6.0
    p = policy("gates: {max_bpb: 9, min_improvement_pct: 0.2}")
    ok = judge(EvalObservation(Scores(2.85, 2.4, clear), Scores(3.0, 2.4, champ)), p)
    assert ok.blessed and "lower bound" in ok.action.reason
    mean_noisy = 100 * (sum(champ) - sum(noisy)) / sum(champ)
    assert mean_noisy > 0.2  # the mean alone would pass ...
    weak = judge(EvalObservation(Scores(3.0 - 0.015, 2.4, noisy), Scores(3.0, 2.4, champ)), p)
    assert not weak.blessed and "lower bound" in weak.action.reason  # ... the bound does not
    assert paired_bootstrap(champ[:10], clear, confidence=0.9, resamples=200, seed=0) is None


def test_a_candidate_failing_the_serving_check_is_refused_whatever_its_scores() -> None:
    p = policy("gates: {min_improvement_pct: 1.0, bootstrap: {enabled: false}}")
    good = EvalObservation(Scores(2.9, 2.4), Scores(3.0, 2.4))
    assert judge(good, p).blessed
    v = judge(EvalObservation(Scores(2.9, 2.4), Scores(3.0, 2.4), serving_problem="empty"), p)
    assert not v.blessed and v.action.outcome == "refused"
    assert "load-and-query" in v.action.reason


def test_a_rollout_policy_asks_for_a_canary_only_where_traffic_can_carry_it() -> None:
    canary = policy("rollout: {steps: [50, 100]}")
    live = DeployObservation(True, 2, 1, no_canary_because=None)
    assert decide_deploy(live, canary).step == "canary"
    off = decide_deploy(DeployObservation(True, 2, 1), canary)
    assert off.step == "promote" and "serving is off" in off.action.reason
    assert decide_deploy(DeployObservation(True, 2, None, no_canary_because=None), canary).step == (
        "promote"  # a first model has no champion to compare with
    )
    assert decide_deploy(live, policy()).step == "promote"  # no rollout section
