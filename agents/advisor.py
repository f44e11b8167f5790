"""When may the LLM advisor be asked? Pure: only within the day's agent-token budget."""

from __future__ import annotations

from agents.actions import Action


def decide_advice(
    *, used_today: int, budget: int, prompt_tokens_estimate: int, max_tokens: int
) -> Action:
    need = prompt_tokens_estimate + max_tokens
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
