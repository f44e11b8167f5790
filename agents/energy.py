"""Energy agent (decide side): may this cycle spend tokens and joules, and how many?

Pure: from the day's ledger and the policy's budgets, decide how many trials fit and
what each may spend. A budget set below one trial's need can never be met and is
*refused*; a day whose budget is spent is *deferred* to the next day.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.actions import Action
from policies.model import Policy

J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergyObservation:
    day_tokens: int
    day_joules: float
    joules_per_token: float | None  # measured or estimated history; None before any trial
    energy_method: str  # how the history was obtained ("measured" / "estimated")


@dataclass(frozen=True)
class TrainingAllowance:
    trials: int
    tokens_per_trial: int
    joules_per_trial: float
    tokens_left: int
    joules_left: float


@dataclass(frozen=True)
class EnergyDecision:
    allowance: TrainingAllowance | None
    actions: tuple[Action, ...]


def decide_energy(obs: EnergyObservation, policy: Policy) -> EnergyDecision:
    b = policy.budgets
    planned = policy.tuning.trials_per_cycle
    per_trial = b.tokens_per_trial
    jpt = obs.joules_per_token or policy.energy.prior_joules_per_token
    basis = obs.energy_method if obs.joules_per_token else "prior estimate"
    day_joules_budget = b.energy_kwh_per_day * J_PER_KWH
    tokens_left = b.training_tokens_per_day - obs.day_tokens
    joules_left = day_joules_budget - obs.day_joules
    trial_joules = per_trial * jpt
    figures = {
        "planned_trials": planned,
        "tokens_per_trial": per_trial,
        "joules_per_token": round(jpt, 9),
        "joules_per_token_basis": basis,
        "trial_joules_needed": round(trial_joules, 3),
        "day_tokens_used": obs.day_tokens,
        "day_tokens_budget": b.training_tokens_per_day,
        "day_joules_used": round(obs.day_joules, 3),
        "day_joules_budget": round(day_joules_budget, 3),
    }
    if b.training_tokens_per_day < per_trial:
        short = per_trial - b.training_tokens_per_day
        return _no(
            "refused",
            (
                f"training_tokens_per_day={b.training_tokens_per_day} is below one trial's need "
                f"of {per_trial} tokens (shortfall {short}); no trial can ever run"
            ),
            figures | {"shortfall_tokens": short},
        )
    if day_joules_budget < trial_joules:
        short = trial_joules - day_joules_budget
        return _no(
            "refused",
            (
                f"energy_kwh_per_day={b.energy_kwh_per_day} ({day_joules_budget:.0f} J) is below "
                f"one trial's need of {trial_joules:.0f} J ({basis}; shortfall {short:.0f} J)"
            ),
            figures | {"shortfall_joules": round(short, 3)},
        )
    if tokens_left < per_trial:
        short = per_trial - max(tokens_left, 0)
        return _no(
            "deferred",
            (
                f"today's training-token budget is spent: {max(tokens_left, 0)} tokens left, one "
                f"trial needs {per_trial} (shortfall {short}); waiting for tomorrow"
            ),
            figures | {"shortfall_tokens": short},
        )
    if joules_left < trial_joules:
        short = trial_joules - max(joules_left, 0.0)
        return _no(
            "deferred",
            (
                f"today's energy budget is spent: {max(joules_left, 0):.0f} J left, one trial "
                f"needs {trial_joules:.0f} J ({basis}; shortfall {short:.0f} J); "
                "waiting for tomorrow"
            ),
            figures | {"shortfall_joules": round(short, 3)},
        )
    fit = min(planned, tokens_left // per_trial, int(joules_left // trial_joules))
    allowance = TrainingAllowance(
        trials=fit,
        tokens_per_trial=per_trial,
        joules_per_trial=trial_joules,
        tokens_left=tokens_left,
        joules_left=joules_left,
    )
    reason = f"{fit} of {planned} planned trials fit today's budgets"
    if fit < planned:
        reason += " (trimmed to stay within budget)"
    return EnergyDecision(
        allowance, (Action("energy", "allow_training", "taken", reason, figures | {"trials": fit}),)
    )


def _no(outcome: str, reason: str, figures: dict) -> EnergyDecision:
    return EnergyDecision(None, (Action("energy", "allow_training", outcome, reason, figures),))  # type: ignore[arg-type]
