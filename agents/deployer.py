"""Deployer agent (decide side): promote now, wait for a person, or hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agents.actions import Action
from policies.model import Policy

Step = Literal["promote", "await_approval", "hold"]


@dataclass(frozen=True)
class DeployDecision:
    step: Step
    action: Action


def decide_deploy(
    blessed: bool,
    candidate_version: int | None,
    champion_version: int | None,
    policy: Policy,
    approved: bool | None = None,
) -> DeployDecision:
    """`approved` is a person's answer when the policy requires one (None: not asked yet)."""
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
