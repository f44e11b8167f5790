"""When may the LLM advisor be asked? Pure: only within the day's agent-token budget."""

from __future__ import annotations

from dataclasses import dataclass

from agents.actions import Action
from policies.model import Policy


@dataclass(frozen=True)
class AdviceObservation:
    used_today: int  # agent LLM tokens on today's ledger
    prompt_tokens_estimate: int


def decide_advice(obs: AdviceObservation, policy: Policy) -> Action:
    budget = policy.budgets.agent_llm_tokens_per_day
    max_tokens = policy.advisor.max_tokens if policy.advisor is not None else 0
    used_today = obs.used_today
    need = obs.prompt_tokens_estimate + max_tokens
    figures = {
        "agent_tokens_used_today": used_today,
        "agent_tokens_budget": budget,
        "tokens_needed": need,
    }
    if used_today + need > budget:
        return Action(
            "advisor",
            "explain",
            "deferred",
            f"agent LLM token budget: {max(budget - used_today, 0)} left today, asking needs "
            f"up to {need} (shortfall {used_today + need - budget}); cycle not explained",
            figures,
        )
    return Action("advisor", "explain", "taken", "within the agent LLM token budget", figures)
