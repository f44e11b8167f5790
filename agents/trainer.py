"""Trainer agent (decide side): the search space and which trial becomes the candidate.

Pure helpers; the trainer node runs the Optuna study (ask/tell, owned by the daemon) and
dispatches each trial to the cluster adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna.distributions as od

from agents.actions import Action
from policies.model import CategoricalParam, FloatParam, IntParam, Policy


def distributions(policy: Policy) -> dict[str, od.BaseDistribution]:
    out: dict[str, od.BaseDistribution] = {}
    for name, spec in policy.tuning.search_space.items():
        if isinstance(spec, FloatParam):
            out[name] = od.FloatDistribution(spec.low, spec.high, log=spec.log)
        elif isinstance(spec, IntParam):
            step = 1 if spec.log else spec.step
            out[name] = od.IntDistribution(spec.low, spec.high, log=spec.log, step=step)
        elif isinstance(spec, CategoricalParam):
            out[name] = od.CategoricalDistribution(list(spec.choices))
    return out


def warm_start_params(
    previous_best: dict[str, Any] | None, policy: Policy
) -> dict[str, Any] | None:
    """The previous best, limited to today's search space and only where still valid."""
    if not policy.tuning.warm_start or not previous_best:
        return None
    dists = distributions(policy)
    params = {k: v for k, v in previous_best.items() if k in dists}
    if set(params) != set(dists):
        return None
    for k, v in params.items():
        if not dists[k]._contains(dists[k].to_internal_repr(v)):
            return None
    return params


@dataclass(frozen=True)
class TrialSummary:
    key: str
    number: int | None
    status: str  # complete | failed
    valid_bpb: float | None
    tokens: int
    joules: float
    params: dict[str, Any]
    artefact_path: str


def choose_candidate(trials: list[TrialSummary]) -> tuple[TrialSummary | None, Action]:
    """The best finished trial with a finite score; NaN or failed trials never qualify."""
    usable = [
        t
        for t in trials
        if t.status == "complete"
        and t.valid_bpb is not None
        and math.isfinite(t.valid_bpb)
        and t.artefact_path
    ]
    figures = {
        "trials": len(trials),
        "usable": len(usable),
        "failed": sum(1 for t in trials if t.status != "complete"),
        "scores": {t.key.rsplit(":", 1)[-1]: t.valid_bpb for t in trials},
    }
    if not usable:
        return None, Action(
            "trainer", "choose_candidate", "refused", "no trial produced a usable model", figures
        )
    best = min(usable, key=lambda t: t.valid_bpb or math.inf)
    return best, Action(
        "trainer",
        "choose_candidate",
        "taken",
        f"trial {best.number} has the best validation score {best.valid_bpb:.4f} bits/byte",
        figures | {"chosen": best.number, "params": best.params},
    )
