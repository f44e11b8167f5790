"""Placement knobs found, not typed: the pure plan (what a device adds, what the operator
or the workload rules out) and a real cycle on a fake H200 with a workload that honours
some knobs only."""

from __future__ import annotations

import json
from pathlib import Path

from test_e2e import ROOT, daemon, policy_file, wait_for

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.workload.bytelm import ByteLMWorkload
from adapters.workload.protocol import honoured_knobs
from agents.placement import DeviceView, plan_placement, with_placement
from policies.loader import parse_policy

H200 = DeviceView(
    True,
    "NVIDIA H200",
    memory_bytes=141 * 2**30,
    bf16=True,
    tf32=True,
    power_default_w=700.0,
    power_min_w=400.0,
    power_knob_problem=None,
    bytes_per_sample=ByteLMWorkload.bytes_per_sample(
        {"d_model": 1024, "n_layers": 24, "n_heads": 16, "context": 1024}
    ),
)
BYTELM = honoured_knobs(ByteLMWorkload())


def policy(text: str = "") -> object:
    return parse_policy("name: p\n" + text)


def test_a_bf16_gpu_adds_precision_batches_accumulation_and_power_with_reasons() -> None:
    plan = plan_placement(H200, policy(), BYTELM)
    assert plan.additions["precision"].choices == ["fp32", "bf16", "tf32"]
    assert plan.additions["power_limit_w"].choices == [700.0, 595.0, 490.0]
    assert plan.additions["grad_accum"].choices == [1, 2, 4]
    assert plan.defaults == {
        "precision": "fp32",
        "batch_size": 8,
        "grad_accum": 1,
        "power_limit_w": 700.0,
    }
    assert plan.action is not None and plan.action.action == "placement_knobs"
    knobs = {k["knob"]: k for k in plan.action.figures["knobs"]}
    assert set(knobs) == {"precision", "batch_size", "grad_accum", "power_limit_w"}
    # 5.7 GB a sample at this shape: of the sizes, only 8 fits half of 141 GiB, and it
    # replaces the default space's 16 and 32, which would not fit
    assert knobs["batch_size"]["added"] and knobs["batch_size"]["values"] == [8]
    assert "only 8" in knobs["batch_size"]["why"]
    searched = with_placement(policy(), plan)
    assert set(searched.tuning.search_space) >= {"lr", "precision", "grad_accum", "power_limit_w"}
    assert searched.tuning.search_space["batch_size"].choices == [8]


def test_no_batch_or_accumulation_that_leaves_a_trial_too_few_steps() -> None:
    """A trial's tokens must give MIN_STEPS optimiser steps at every combination offered:
    fewer never leave the warm-up, and below one the workload refuses to start."""
    from dataclasses import replace

    from agents.placement import MIN_STEPS

    roomy = DeviceView(
        True, "NVIDIA H100", 80 * 2**30, True, True, None, None, "not permitted", 3_538_944
    )
    long_context = replace(roomy, tokens_per_sample=1024)
    plan = plan_placement(long_context, policy(), BYTELM)  # 600,000 tokens a trial
    batches = plan.additions["batch_size"].choices
    assert batches == [8]  # 16 x 1024 x 50 > 600,000
    accums = plan.additions.get("grad_accum")
    assert accums is None  # 8 x 2 x 1024 x 50 > 600,000: nothing to search
    for batch in batches:
        assert 600_000 / (batch * 1024) >= MIN_STEPS
    bigger = policy("budgets: {tokens_per_trial: 20000000}\n")
    plan = plan_placement(long_context, bigger, BYTELM)
    assert max(plan.additions["batch_size"].choices) == 256  # 512 x 1024 x 50 > 20M
    assert "grad_accum" not in plan.additions  # 256 x 2 x 1024 x 50 > 20M
    # where memory stops the batch, accumulation is what the budget allows on top of it
    plan = plan_placement(replace(H200, tokens_per_sample=1024), bigger, BYTELM)
    assert plan.additions["batch_size"].choices == [8]
    assert plan.additions["grad_accum"].choices == [1, 2, 4]


def test_small_models_get_every_batch_size_and_accumulation() -> None:
    small = DeviceView(
        True, "NVIDIA H100", 80 * 2**30, True, True, None, None, "not permitted", 3_538_944
    )
    plan = plan_placement(small, policy(), BYTELM)
    assert plan.additions["batch_size"].choices == [8, 16, 32, 64, 128, 256, 512]
    assert plan.additions["grad_accum"].choices == [1, 2, 4]
    assert plan.defaults["batch_size"] == 32
    assert "power_limit_w" not in plan.additions
    why = {k["knob"]: k["why"] for k in plan.action.figures["knobs"]}
    assert "not permitted here (not permitted)" in why["power_limit_w"]


def test_a_knob_the_workload_does_not_honour_is_never_added() -> None:
    honours = {"batch_size": (32, 64)}
    plan = plan_placement(H200, policy(), honours)
    assert "precision" not in plan.additions and "grad_accum" not in plan.additions
    why = {k["knob"]: k["why"] for k in plan.action.figures["knobs"]}
    assert why["precision"] == "the workload does not honour it: never sent"
    # declares nothing: gets nothing (the power limit is the controller's to apply)
    assert set(plan_placement(H200, policy(), {}).additions) == {"power_limit_w"}


def test_what_the_operator_names_is_left_as_written_and_off_means_off() -> None:
    named = policy(
        "tuning:\n  search_space:\n    precision: {type: categorical, choices: [bf16]}\n"
        "  fixed: {batch_size: 16}\n"
    )
    plan = plan_placement(H200, named, BYTELM)
    assert "precision" not in plan.additions and "batch_size" not in plan.additions
    assert "grad_accum" not in plan.additions  # the operator's batch keeps its meaning
    off = plan_placement(H200, policy("energy: {placement: 'off'}\n"), BYTELM)
    assert off.additions == {} and off.action is None


def test_a_cpu_adds_nothing() -> None:
    plan = plan_placement(DeviceView(False, "this machine's CPU"), policy(), BYTELM)
    assert plan.additions == {} and plan.action is None  # nothing added: no event
    assert "no accelerator" in plan.choices[0].reason


def test_the_new_setting_keeps_every_existing_policy_version() -> None:
    assert policy().version == policy("energy: {placement: auto}\n").version
    assert policy().version != policy("energy: {placement: 'off'}\n").version
    # YAML reads an unquoted off as false: it still means off
    assert policy("energy: {placement: off}\n").energy.placement == "off"
    assert (
        policy("energy: {placement: off}\n").version
        == policy("energy: {placement: 'off'}\n").version
    )


def test_a_cycle_on_a_fake_h200_searches_what_the_workload_honours(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pol = policy_file(
        tmp_path,
        **{
            "name: tiny": "name: tiny\nworkload: placement_workloads:NoAccumulation",
            ", batch_size: 16,": ",",
            "gates:": "energy: {gpu: nvml}\ngates:",
        },
    )
    env = {
        "PYTHONPATH": str(ROOT / "tests"),
        "AIFACTORY_NVML_MODULE": "fake_nvml_module",
        "AIFACTORY_FAKE_NVML_STATE": str(tmp_path / "fake_gpu.json"),
    }
    log = tmp_path / "daemon.log"
    args = ("--policy", str(pol), "--state-dir", str(state), "--no-serve", "--once")
    with daemon(*args, log=log, env=env) as proc:
        assert proc.wait(240) == 0, log.read_text()[-3000:]
    store = Store(f"sqlite:///{state / 'aifactory.db'}")
    event = wait_for(
        lambda: [
            e for e in AuditLog(store).events(agent="energy") if e.action == "placement_knobs"
        ],
        5,
        "the placement event",
    )[0]
    knobs = {k["knob"]: k for k in event.figures["knobs"]}
    assert knobs["precision"]["values"] == ["fp32", "bf16"]  # tf32 not honoured
    assert knobs["batch_size"]["values"] == [8, 16, 32]  # each 50+ steps in 60,000 tokens
    assert not knobs["grad_accum"]["added"] and "does not honour" in knobs["grad_accum"]["why"]
    trials = [t for c in CycleBook(store).recent("tiny", 5) for t in CycleBook(store).trials(c.id)]
    assert trials and all(t.status == "complete" for t in trials)
    for t in trials:
        params = json.loads(t.params)
        assert params["precision"] in ("fp32", "bf16") and params["batch_size"] in (8, 16, 32)
        assert "grad_accum" not in params
    store.dispose()


def test_memory_is_estimated_where_the_search_may_go() -> None:
    """A searched width or context counts at its largest, not at the fixed default."""
    from controller.line_setup import largest_shape

    searched = policy(
        "tuning:\n  search_space:\n    d_model: {type: categorical, choices: [64, 512]}\n"
        "    context: {type: int, low: 64, high: 512}\n"
        "    lr: {type: float, low: 0.001, high: 0.01}\n  fixed: {n_layers: 4}\n"
    )
    shape = largest_shape(searched)
    assert (shape["d_model"], shape["context"], shape["n_layers"]) == (512, 512, 4)
    assert ByteLMWorkload.tokens_per_sample(shape) == 512
    assert ByteLMWorkload.bytes_per_sample(shape) > ByteLMWorkload.bytes_per_sample({"n_layers": 4})
