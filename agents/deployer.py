"""Deployer agent (decide side): promote now, wait for a person, or hold."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from agents.actions import Action
from policies.model import Policy

Step = Literal["promote", "canary", "await_approval", "hold"]


@dataclass(frozen=True)
class DeployObservation:
    """The evaluator's verdict, the aliases, a person's answer (None: not asked yet, or no
    approval needed) and whether live traffic can carry a canary (`no_canary_because`)."""

    blessed: bool
    candidate_version: int | None
    champion_version: int | None
    approved: bool | None = None
    no_canary_because: str | None = "serving is off: no live traffic to run a canary on"


@dataclass(frozen=True)
class DeployDecision:
    step: Step
    action: Action


def decide_deploy(obs: DeployObservation, policy: Policy) -> DeployDecision:
    """Hold, wait for a person, run a canary (a rollout policy, a champion to compare with
    and live traffic) or promote at once."""
    decision = _decide(obs, policy)
    if decision.step != "promote" or policy.rollout is None or obs.champion_version is None:
        return decision
    if obs.no_canary_because is None:
        return replace(decision, step="canary")
    action = decision.action
    return replace(
        decision, action=replace(action, reason=f"{action.reason} ({obs.no_canary_because})")
    )


def _decide(obs: DeployObservation, policy: Policy) -> DeployDecision:
    blessed, candidate_version = obs.blessed, obs.candidate_version
    champion_version, approved = obs.champion_version, obs.approved
    figures = {"candidate": candidate_version, "champion": champion_version, "approved": approved}
    if not blessed or candidate_version is None:
        return DeployDecision(
            "hold",
            Action("deployer", "promote", "refused", "candidate was not blessed", figures),
        )
    if policy.approval == "required" and approved is False:
        return DeployDecision(
            "hold",
            Action("deployer", "promote", "refused", "a person rejected the promotion", figures),
        )
    if policy.approval == "required" and approved is None:
        return DeployDecision(
            "await_approval",
            Action(
                "deployer",
                "promote",
                "deferred",
                f"v{candidate_version} is blessed; policy requires a person's approval",
                figures,
            ),
        )
    return DeployDecision(
        "promote",
        Action(
            "deployer",
            "promote",
            "taken",
            f"v{candidate_version} is blessed; replacing "
            + (f"v{champion_version}" if champion_version else "no champion"),
            figures,
        ),
    )
