"""Trainer agent (decide side): the search space and which trial becomes the candidate.

Pure helpers; the trainer node runs the Optuna study (ask/tell, owned by the daemon) and
dispatches each trial to the cluster adapter.
"""

from __future__ import annotations

import itertools
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
        try:  # a categorical raises for a value outside today's choices (another device)
            if not dists[k]._contains(dists[k].to_internal_repr(v)):
                return None
        except ValueError:
            return None
    return params


@dataclass(frozen=True)
class TrialSummary:
    key: str
    number: int | None
    status: str  # complete | failed | pruned
    valid_bpb: float | None
    tokens: int
    joules: float
    params: dict[str, Any]
    artefact_path: str
    seconds: float | None = None
    energy_cost: float | None = None  # the second objective: J/token or Zeus cost per token
    artefact_sha256: str = ""  # with a shared store: the artefact's content, in the share

    @property
    def usable(self) -> bool:
        return (
            self.status == "complete"
            and self.valid_bpb is not None
            and math.isfinite(self.valid_bpb)
            and bool(self.artefact_path)
        )


def energy_cost(
    policy: Policy, *, tokens: int, joules: float, seconds: float, max_power_w: float
) -> float | None:
    """The energy objective of a trial, per training token (None without tokens)."""
    if tokens <= 0:
        return None
    obj = policy.tuning.objectives
    if obj.kind == "zeus_cost":
        p_max = obj.max_power_w or max_power_w
        return (obj.eta * joules + (1.0 - obj.eta) * p_max * seconds) / tokens
    return joules / tokens


def pareto_front(trials: list[TrialSummary]) -> list[TrialSummary]:
    """Usable trials that no other usable trial beats on both quality and energy cost."""
    pts = [t for t in trials if t.usable and t.energy_cost is not None]
    front = []
    for t in pts:
        dominated = any(
            (o.valid_bpb or math.inf) <= (t.valid_bpb or math.inf)
            and (o.energy_cost or math.inf) <= (t.energy_cost or math.inf)
            and (
                (o.valid_bpb or math.inf) < (t.valid_bpb or math.inf)
                or (o.energy_cost or math.inf) < (t.energy_cost or math.inf)
            )
            for o in pts
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.valid_bpb or math.inf)


Curve = list[tuple[int, float]]  # (tokens, training loss) points of one trial


def loss_at(curve: Curve, tokens: int) -> float | None:
    """Linear interpolation of a loss curve at `tokens` (None outside the curve)."""
    if not curve or tokens < curve[0][0] or tokens > curve[-1][0]:
        return None
    for (t0, l0), (t1, l1) in itertools.pairwise(curve):
        if t0 <= tokens <= t1:
            return l0 if t1 == t0 else l0 + (l1 - l0) * (tokens - t0) / (t1 - t0)
    return curve[-1][1]


def should_prune(
    tokens: int, loss: float, max_tokens: int, earlier: list[Curve], policy: Policy
) -> tuple[bool, float | None]:
    """Prune when the loss is worse than the median of earlier trials at the same token count
    by more than the margin. Returns (prune, the median it was compared with)."""
    rule = policy.tuning.pruning
    if not rule.enabled or tokens < rule.warmup_fraction * max_tokens:
        return False, None
    if not math.isfinite(loss):
        return True, None
    values = sorted(v for c in earlier if (v := loss_at(c, tokens)) is not None)
    if len(values) < rule.startup_trials:
        return False, None
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return loss > median * (1.0 + rule.margin_pct / 100.0), median


def choose_candidate(
    trials: list[TrialSummary], policy: Policy | None = None
) -> tuple[TrialSummary | None, Action]:
    """Pick the candidate by the policy's rule; NaN, failed or pruned trials never qualify.

    best_quality: the lowest validation bits/byte. least_energy_within: the lowest energy
    cost among trials within `quality_tolerance_pct` of the best quality.
    """
    usable = [t for t in trials if t.usable]
    figures: dict[str, Any] = {
        "trials": len(trials),
        "usable": len(usable),
        "failed": sum(1 for t in trials if t.status == "failed"),
        "pruned": sum(1 for t in trials if t.status == "pruned"),
        "scores": {t.key.rsplit(":", 1)[-1]: t.valid_bpb for t in trials},
    }
    if not usable:
        return None, Action(
            "trainer", "choose_candidate", "refused", "no trial produced a usable model", figures
        )
    best = min(usable, key=lambda t: t.valid_bpb or math.inf)
    rule = policy.tuning.selection if policy is not None else None
    if rule is not None and rule.rule == "least_energy_within":
        limit = (best.valid_bpb or math.inf) * (1.0 + rule.quality_tolerance_pct / 100.0)
        near = [t for t in usable if (t.valid_bpb or math.inf) <= limit and t.energy_cost]
        if near:
            frugal = min(near, key=lambda t: t.energy_cost or math.inf)
            figures |= {
                "rule": "least_energy_within",
                "tolerance_pct": rule.quality_tolerance_pct,
                "best_quality_trial": best.number,
                "energy_costs": {t.key.rsplit(":", 1)[-1]: t.energy_cost for t in usable},
            }
            saving = (
                100.0 * (1 - (frugal.energy_cost or 0) / best.energy_cost)
                if best.energy_cost
                else 0.0
            )
            return frugal, Action(
                "trainer",
                "choose_candidate",
                "taken",
                f"trial {frugal.number}: least energy ({frugal.energy_cost:.3g} per token) within "
                f"{rule.quality_tolerance_pct:g}% of the best quality ({frugal.valid_bpb:.4f} vs "
                f"{best.valid_bpb:.4f} bits/byte); {saving:.0f}% less than the best-quality trial",
                figures | {"chosen": frugal.number, "params": frugal.params},
            )
    return best, Action(
        "trainer",
        "choose_candidate",
        "taken",
        f"trial {best.number} has the best validation score {best.valid_bpb:.4f} bits/byte",
        figures | {"chosen": best.number, "params": best.params},
    )


@dataclass(frozen=True)
class SearchObservation:
    """What the trainer node knows before asking Optuna for the cycle's first trial."""

    power_knob_problem: str | None  # None: power limits may be set here
    champion_version: int | None
    champion_params: dict[str, Any] | None
    study_has_finished_trials: bool


@dataclass(frozen=True)
class SearchPlan:
    """Tunables to leave out, the first trial to enqueue, and the actions saying why
    (each with the audit key suffix it is recorded under)."""

    drop: tuple[str, ...]
    first_trial: dict[str, Any] | None
    first_trial_key: str | None
    actions: tuple[tuple[str, Action], ...]


def plan_search(obs: SearchObservation, policy: Policy) -> SearchPlan:
    """Plan without a knob that cannot be applied here (never fail the cycle for it); start
    from the champion's parameters (warm start), or a cold study from the operator's
    baseline."""
    actions: list[tuple[str, Action]] = []
    drop: tuple[str, ...] = ()
    if "power_limit_w" in policy.tuning.search_space and obs.power_knob_problem:
        drop = ("power_limit_w",)
        actions.append(
            (
                "energy:tune_power_limit",
                Action(
                    "energy",
                    "tune_power_limit",
                    "refused",
                    f"power_limit_w is in the search space but not permitted here "
                    f"({obs.power_knob_problem}); trials run at the current limit",
                    {"problem": obs.power_knob_problem},
                ),
            )
        )
    warm = warm_start_params(obs.champion_params, policy)
    if warm is not None and obs.champion_version is not None:
        reason = (
            f"first trial re-runs champion v{obs.champion_version}'s parameters on today's data"
        )
        first = ("trainer:warm_start", Action("trainer", "warm_start", "taken", reason, {}))
        return SearchPlan(drop, warm, first[0], (*actions, _with_params(first, warm)))
    baseline = policy.tuning.baseline
    if warm is None and baseline and not obs.study_has_finished_trials:
        reason = "cold study: the first trial is the operator's baseline configuration"
        first = ("trainer:baseline", Action("trainer", "baseline", "taken", reason, {}))
        return SearchPlan(
            drop, dict(baseline), first[0], (*actions, _with_params(first, dict(baseline)))
        )
    return SearchPlan(drop, None, None, tuple(actions))


def _with_params(item: tuple[str, Action], params: dict[str, Any]) -> tuple[str, Action]:
    return item[0], item[1].with_figures(params=params)


def prune_action(
    number: int | None, tokens: int, figures: dict[str, Any], policy: Policy
) -> Action:
    """Why a trial was stopped early: what it was compared against."""
    return Action(
        "trainer",
        "prune_trial",
        "taken",
        f"trial {number} pruned after {tokens:,} tokens: its training loss was more than "
        f"{policy.tuning.pruning.margin_pct:g}% worse than the median of earlier trials at the "
        "same token count",
        figures,
    )


def duplicate_of(params: dict[str, Any], finished: list[tuple[int, dict[str, Any]]]) -> int | None:
    """The trial of this cycle (number) that ran, or is running, these exact parameters.
    On the same data a repeat teaches the search nothing and costs a whole trial's energy
    (small categorical spaces make samplers repeat themselves); another cycle's trial ran on
    other data, so only the cycle's own count."""
    return next((n for n, p in finished if p == params), None)


_MAX_POINTS = 10_000  # a finite space larger than this is left to the sampler


def unrun_points(
    choices: dict[str, list[Any]], ran: list[tuple[int, dict[str, Any]]]
) -> list[dict[str, Any]] | None:
    """The points of a finite space the cycle has not run, in the space's order; None when
    the space is too large to list. A sampler that has converged (TPE on a few
    categories) keeps drawing the best point: an unrun one teaches the search something."""
    size = math.prod(len(values) for values in choices.values())
    if size > _MAX_POINTS:
        return None
    names = sorted(choices)
    seen = {tuple(p.get(n) for n in names) for _, p in ran if set(p) == set(names)}
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(choices[n] for n in names))
        if combo not in seen
    ]


def unrun_point_action(point: dict[str, Any], repeats: int) -> Action:
    return Action(
        "trainer",
        "unrun_point",
        "taken",
        f"the sampler repeated this cycle's trials {repeats} times: an unrun point of the "
        f"space is tried instead ({point})",
        {"params": point, "repeats": repeats},
    )


def skip_duplicate_action(number: int, params: dict[str, Any], earlier: int) -> Action:
    return Action(
        "trainer",
        "skip_duplicate",
        "taken",
        f"trial {number} asked for the parameters trial {earlier} ran on this cycle's "
        f"data: not trained again (recorded as failed, so the point counts once)",
        {"params": params, "duplicate_of": earlier},
    )
