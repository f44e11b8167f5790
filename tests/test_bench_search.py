"""The energy benchmarks' arithmetic, on made-up runs (the runs themselves are benchmarks)."""

from __future__ import annotations

import argparse

import pytest

from bench import energy_to_target, search_efficiency
from bench.ceiling import ceiling_tokens_per_joule, share_of_ceiling
from bench.daemon_runs import ArmSpec, categorical_space, policy_yaml, to_target
from policies.loader import parse_policy


def _args(**over: object) -> argparse.Namespace:
    base = {"lrs": [0.001, 0.003], "batches": [16, 32], "precisions": ["fp32"], "recheck": 0}
    return argparse.Namespace(**(base | over))


def _point(lr: float, batch: int, joules: float, reached: bool = True) -> dict:
    params = {"lr": lr, "batch_size": batch}
    return {"params": params, "reached": reached, "joules": joules, "startup_joules": 10.0}


def test_the_grid_is_every_combination_and_precision_only_when_asked() -> None:
    assert len(search_efficiency.grid_points(_args())) == 4
    points = search_efficiency.grid_points(_args(precisions=["fp32", "bf16"]))
    assert len(points) == 8 and {p["precision"] for p in points} == {"fp32", "bf16"}


def test_the_choice_is_judged_against_the_sweeps_best() -> None:
    points = [
        _point(0.001, 16, 500.0),
        _point(0.001, 32, 400.0),
        _point(0.003, 16, 900.0, reached=False),
        _point(0.003, 32, 430.0),
    ]
    choice = {"params": {"lr": 0.003, "batch_size": 32}, "joules": 420.0, "reached": True}
    search = {"choice": choice, "search_joules": 1_000.0}
    v = search_efficiency.summarise(points, search, _args(), base=None)  # type: ignore[arg-type]
    assert v["best"]["joules"] == 400.0 and v["choice_rank_in_sweep"] == 2
    # judged on the sweep's own measurement of the choice (each point in a fresh worker)
    assert v["choice_over_best"] == pytest.approx(430 / 400) and v["goal_met"]
    assert v["choice_own_over_best"] == pytest.approx(1.05)
    assert v["sweep_over_search_joules"] == pytest.approx(2.27)  # start-ups on both sides
    far = search | {"choice": {"params": {"lr": 0.001, "batch_size": 16}, "joules": 410.0}}
    v = search_efficiency.summarise(points, far, _args(), base=None)  # type: ignore[arg-type]
    assert v["choice_over_best"] == pytest.approx(1.25) and not v["goal_met"]


def test_no_reaching_trial_is_no_verdict() -> None:
    points = [_point(0.001, 16, 500.0, reached=False)]
    v = search_efficiency.summarise(points, {"choice": None}, _args(), base=None)  # type: ignore[arg-type]
    assert v["goal_met"] is False and "not reached" in v["why"]


def test_energy_to_target_counts_start_ups_until_the_first_reach() -> None:
    trials = [
        {"joules": 100.0, "startup_joules": 20.0, "reached": False, "method": "estimated"},
        {"joules": 50.0, "startup_joules": 0.0, "reached": True, "method": "estimated"},
        {"joules": 999.0, "startup_joules": 0.0, "reached": True, "method": "estimated"},
    ]
    assert to_target(trials) == {
        "reached": True,
        "joules": 170.0,
        "trials_to_target": 2,
        "method": "estimated",
    }


@pytest.mark.parametrize("space", sorted(energy_to_target.SPACES))
def test_the_untuned_arm_is_the_workloads_own_defaults_as_a_valid_policy(space: str) -> None:
    plain = energy_to_target.untuned_params()
    assert plain == {"lr": 0.003, "batch_size": 32, "precision": "fp32"}
    args = argparse.Namespace(
        baseline_lr=0.002,
        baseline_batch=16,
        default_tokens=10,
        trials=3,
        space=space,
        shape=[64, 1, 2, 64],
    )
    args.tokens_per_trial = 10
    specs = energy_to_target.arm_specs(args)
    for name, spec in specs.items():  # every arm's policy file loads as the daemon loads it
        policy = parse_policy(policy_yaml(spec, target=3.0, check_every=5, reuse_workers=True))
        assert policy.name == "bench", name
    untuned = parse_policy(policy_yaml(specs["untuned"], target=3, check_every=5, reuse_workers=1))
    assert untuned.energy.placement == "off" and not untuned.tuning.pruning.enabled
    assert untuned.tuning.search_space["precision"].choices == ["fp32"]
    controller = parse_policy(
        policy_yaml(specs["controller"], target=3, check_every=5, reuse_workers=True)
    )
    assert controller.energy.placement == "auto" and controller.tuning.pruning.enabled
    named = {"lr": 0.002, "batch_size": 16} if space != "placement" else {"lr": 0.002}
    assert controller.tuning.baseline == named  # only what the space names
    assert controller.tuning.fixed["d_model"] == 64 and untuned.tuning.fixed["context"] == 64


def test_ratios_put_each_arm_over_the_controller() -> None:
    arms = {
        "controller": {"joules": 100.0, "reached": True},
        "untuned": {"joules": 250.0, "reached": True},
    }
    r = energy_to_target.ratios(arms)
    assert r["(d)/(c) untuned / controller"] == {"ratio": 2.5, "why": None}
    assert r["(a)/(c) baseline / controller"]["ratio"] is None
    assert "not run" in r["(a)/(c) baseline / controller"]["why"]


def test_arm_spec_defaults_search_with_placement() -> None:
    spec = ArmSpec(
        eras=[["json"]],
        trials=1,
        sampler="tpe",
        space="    lr: {type: float, low: 0.001, high: 0.01}",
        tokens_per_trial=5,
    )
    assert "placement: auto" in policy_yaml(spec, target=3, check_every=5, reuse_workers=True)


def test_the_ceiling_matches_the_figure_measured_on_an_h200() -> None:
    # 152M parameters: about 1,550 tokens/J (peak bf16 FLOP/s per watt over 6 x params)
    assert ceiling_tokens_per_joule("NVIDIA H200", 152_000_000) == pytest.approx(1_550, rel=0.01)
    assert ceiling_tokens_per_joule("NVIDIA H100 PCIe", 1) != ceiling_tokens_per_joule(
        "NVIDIA H100 80GB HBM3", 1
    )
    assert ceiling_tokens_per_joule("Some Unknown Board", 1_000) is None
    for other in ("NVIDIA GH200 480GB", "NVIDIA H100 NVL", "NVIDIA L40", "NVIDIA H200 NVL"):
        assert ceiling_tokens_per_joule(other, 1_000) is None, other  # never a near name
    share = share_of_ceiling("NVIDIA H200", 85_600_000, tokens=911_000, joules=1_000.0)
    assert share["share_of_ceiling"] == pytest.approx(911 / 2_750, rel=0.02)


def test_small_learning_rates_stay_numbers_in_the_policy_file() -> None:
    spec = ArmSpec(
        eras=[["json"]],
        trials=1,
        sampler="random",
        space=categorical_space(lr=[1e-05, 0.003]),
        tokens_per_trial=5,
        baseline={"lr": 1e-05},
    )
    policy = parse_policy(policy_yaml(spec, target=3, check_every=5, reuse_workers=True))
    assert policy.tuning.search_space["lr"].choices == [1e-05, 0.003]
    assert policy.tuning.baseline == {"lr": 1e-05}
