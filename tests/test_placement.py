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
        "grad_accum": 1,
        "power_limit_w": 700.0,
    }
    assert plan.action is not None and plan.action.action == "placement_knobs"
    knobs = {k["knob"]: k for k in plan.action.figures["knobs"]}
    assert set(knobs) == {"precision", "batch_size", "grad_accum", "power_limit_w"}
    # 5.7 GB a sample at this shape: of the sizes, only 8 fits half of 141 GiB
    assert (
        not knobs["batch_size"]["added"]
        and "only 8, nothing to search" in knobs["batch_size"]["why"]
    )
    searched = with_placement(policy(), plan)
    assert set(searched.tuning.search_space) >= {"lr", "precision", "grad_accum", "power_limit_w"}


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
    assert knobs["batch_size"]["values"] == [32, 64, 128]
    assert not knobs["grad_accum"]["added"] and "does not honour" in knobs["grad_accum"]["why"]
    trials = [t for c in CycleBook(store).recent("tiny", 5) for t in CycleBook(store).trials(c.id)]
    assert trials and all(t.status == "complete" for t in trials)
    for t in trials:
        params = json.loads(t.params)
        assert params["precision"] in ("fp32", "bf16") and params["batch_size"] in (32, 64, 128)
        assert "grad_accum" not in params
    store.dispose()
