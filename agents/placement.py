"""Placement knobs found, not typed (pure): which of the device's knobs join the search.

With ``energy.placement: auto`` the probe's view of the device adds what the operator did
not name: precision (bf16, tf32) where the device has it, batch sizes that fit its memory,
gradient accumulation beside them, and power limits where the controller may set them. A
knob the workload does not honour is never added (it would be ignored, and the search
would spend trials learning nothing). Every knob gets a reason, added or not, and the plan
is one audit event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.actions import Action
from policies.model import PLACEMENT_PARAMS, CategoricalParam, Policy

#: batch sizes tried on an accelerator, when memory allows; small ones idle a big board
GPU_BATCHES = (8, 16, 32, 64, 128, 256, 512)
GRAD_ACCUM = (1, 2, 4)
_MEMORY_SHARE = 0.5  # of the device's memory the activations may take (weights, workspace)
_POWER_STEPS = (1.0, 0.85, 0.7)  # of the default limit
#: a trial's token budget must give this many optimiser steps: fewer never get past the
#: warm-up and learn nothing (and below one step the workload refuses to start)
MIN_STEPS = 50


@dataclass(frozen=True)
class DeviceView:
    """What the probe saw of the device trials run on. ``bytes_per_sample``: the
    workload's estimate of one sample's training memory, and ``tokens_per_sample`` the
    tokens one sample consumes, where the workload gives them."""

    accelerator: bool
    name: str
    memory_bytes: int | None = None
    bf16: bool = False
    tf32: bool = False
    power_default_w: float | None = None
    power_min_w: float | None = None
    power_knob_problem: str | None = "no GPU"
    bytes_per_sample: int | None = None
    tokens_per_sample: int | None = None


@dataclass(frozen=True)
class KnobChoice:
    knob: str
    values: tuple[Any, ...] | None  # None: not added
    reason: str
    default: Any = None  # what a trial without the knob ran with (a warm start's value)


@dataclass(frozen=True)
class PlacementPlan:
    additions: dict[str, CategoricalParam]
    defaults: dict[str, Any]
    choices: tuple[KnobChoice, ...]
    action: Action | None


def plan_placement(
    device: DeviceView, policy: Policy, honoured: Mapping[str, Sequence[Any]]
) -> PlacementPlan:
    """``honoured``: each knob the workload applies, with the values it accepts."""
    if policy.energy.placement != "auto":
        return PlacementPlan({}, {}, (), None)
    named = _named(policy)
    choices = []
    for knob, values, why, default in _candidates(device, honoured, policy):
        if knob in named:
            choices.append(KnobChoice(knob, None, "named by the operator: searched as written"))
        elif knob not in honoured and knob not in PLACEMENT_PARAMS:  # ours to apply, or not
            choices.append(KnobChoice(knob, None, "the workload does not honour it: never sent"))
        elif knob == "batch_size" and len(values) < 2:
            choices.append(_one_batch(values, why, honoured))
        elif len(values) < 2:
            only = f"only {values[0]}" if values else "none"
            choices.append(KnobChoice(knob, None, f"{why}: {only}, nothing to search"))
        else:
            choices.append(KnobChoice(knob, tuple(values), why, default))
    choices = [_accumulation_follows_batch(c, choices) for c in choices]
    added = {
        c.knob: CategoricalParam(type="categorical", choices=list(c.values))
        for c in choices
        if c.values
    }
    defaults = {c.knob: c.default for c in choices if c.values}
    action = _action(device, choices) if added else None  # nothing added: nothing to say
    return PlacementPlan(added, defaults, tuple(choices), action)


def _accumulation_follows_batch(choice: KnobChoice, choices: list[KnobChoice]) -> KnobChoice:
    """A batch size the operator chose keeps its meaning: no accumulation on top of it."""
    batch = next((c for c in choices if c.knob == "batch_size"), None)
    if choice.knob != "grad_accum" or batch is None or not batch.reason.startswith("named"):
        return choice
    return KnobChoice("grad_accum", None, "the operator chose the batch size: no accumulation")


def _one_batch(values: list[Any], why: str, honoured: Mapping[str, Sequence[Any]]) -> KnobChoice:
    """Fewer than two batch sizes fit: nothing to search, but the search space as written
    (the default offers 16 and 32) must not try sizes that would not fit, so the one that
    does (or, when none does by the estimate, the smallest) is fixed."""
    if values:
        return KnobChoice("batch_size", (values[0],), f"{why}: only {values[0]}", values[0])
    smallest = min(b for b in GPU_BATCHES if b in honoured.get("batch_size", GPU_BATCHES))
    reason = f"{why}: none by the estimate, so the smallest, {smallest}"
    return KnobChoice("batch_size", (smallest,), reason, smallest)


def _named(policy: Policy) -> set[str]:
    """Knobs the policy file names (a default search space names nothing)."""
    tuning = policy.tuning
    named = set(tuning.fixed)
    if "search_space" in tuning.model_fields_set:
        named |= set(tuning.search_space)
    return named


def _candidates(
    device: DeviceView, honoured: Mapping[str, Sequence[Any]], policy: Policy
) -> list[tuple[str, list[Any], str, Any]]:
    """(knob, values, why, default) for each knob the device could offer."""
    if not device.accelerator:
        why = "no accelerator: fp32 (bf16 on a CPU is emulated, slower, not cheaper)"
        return [("precision", ["fp32"], why, "fp32")]
    precisions = ["fp32"] + [p for p, ok in (("bf16", device.bf16), ("tf32", device.tf32)) if ok]
    precisions = [p for p in precisions if p in honoured.get("precision", precisions)]
    budget = policy.budgets.tokens_per_trial
    batches = _fitting_batches(device, honoured.get("batch_size", GPU_BATCHES))
    batches = [b for b in batches if _steps(device, b, budget) >= MIN_STEPS]
    fit = (
        f"fit half of {device.memory_bytes / 2**30:.0f} GiB at "
        f"{device.bytes_per_sample:,} bytes a sample"
        if device.memory_bytes and device.bytes_per_sample
        else "no memory estimate: every size offered"
    )
    if device.tokens_per_sample:
        fit += f" and give {MIN_STEPS}+ optimiser steps in a trial's {budget:,} tokens"
    widest = max(batches, default=1)
    accums = [g for g in GRAD_ACCUM if g in honoured.get("grad_accum", GRAD_ACCUM)]
    accums = [g for g in accums if _steps(device, widest * g, budget) >= MIN_STEPS]
    out = [
        ("precision", precisions, f"{device.name} has {', '.join(precisions)}", "fp32"),
        (
            "batch_size",
            batches,
            f"batch sizes that {fit}",
            32 if 32 in batches else (batches or [None])[0],
        ),
        (
            "grad_accum",
            accums,
            f"larger effective batches where memory stops the batch (with batch {widest}: "
            f"{MIN_STEPS}+ optimiser steps in {budget:,} tokens)",
            1,
        ),
    ]
    if device.power_knob_problem is None and device.power_default_w:
        limits = sorted(
            {
                max(device.power_min_w or 0.0, round(device.power_default_w * s))
                for s in _POWER_STEPS
            },
            reverse=True,
        )
        out.append(
            (
                "power_limit_w",
                limits,
                "permitted here: the default limit and lower ones",
                device.power_default_w,
            )
        )
    else:
        out.append(("power_limit_w", [], f"not permitted here ({device.power_knob_problem})", None))
    return out


def _steps(device: DeviceView, samples_per_step: int, budget: int) -> float:
    """Optimiser steps a trial's token budget gives; unbounded without the workload's
    tokens per sample."""
    if not device.tokens_per_sample:
        return float("inf")
    return budget / (samples_per_step * device.tokens_per_sample)


def _fitting_batches(device: DeviceView, offered: Sequence[Any]) -> list[int]:
    sizes = [b for b in GPU_BATCHES if b in offered]
    if not device.memory_bytes or not device.bytes_per_sample:
        return sizes
    room = device.memory_bytes * _MEMORY_SHARE
    return [b for b in sizes if b * device.bytes_per_sample <= room]


def _action(device: DeviceView, choices: list[KnobChoice]) -> Action:
    added = [c for c in choices if c.values]
    summary = "; ".join(f"{c.knob} {list(c.values)}" for c in added) or "nothing"
    reason = f"placement on {device.name}: added {summary}"
    figures = {
        "device": device.name,
        "knobs": [
            {
                "knob": c.knob,
                "added": c.values is not None,
                "values": list(c.values or ()),
                "why": c.reason,
            }
            for c in choices
        ],
    }
    return Action("energy", "placement_knobs", "taken", reason, figures)


def with_placement(policy: Policy, plan: PlacementPlan) -> Policy:
    """The policy the trainer searches with: the additions in its search space (the stored
    policy and its version stay as the operator wrote them)."""
    if not plan.additions:
        return policy
    space = {**policy.tuning.search_space, **plan.additions}
    tuning = policy.tuning.model_copy(update={"search_space": space})
    return policy.model_copy(update={"tuning": tuning})
