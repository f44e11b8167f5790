"""The deployer node: the deployer agent decides (hold, canary or promote); a promotion
moves the aliases and serving follows; a canary hands over to the canary node."""

from __future__ import annotations

from typing import Any

from agents.deployer import DeployObservation, decide_deploy
from controller.context import CycleState, LineContext
from controller.nodes.canary import RolloutStage


class DeployerNode:
    def __init__(self, ctx: LineContext, rollout: RolloutStage) -> None:
        self.ctx = ctx
        self.rollout = rollout

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        champion = ctx.champion()
        candidate = state.get("candidate_version")
        live = ctx.traffic is not None and ctx.rollouts is not None
        decision = decide_deploy(
            DeployObservation(
                blessed=bool(state.get("blessed")),
                candidate_version=candidate,
                champion_version=champion.version if champion else None,
                approved=state.get("approved"),
                no_canary_because=None
                if live
                else "serving is off: no live traffic to run a canary on",
            ),
            ctx.policy,
        )
        if decision.step == "canary" and candidate is not None and champion is not None:
            return self.rollout.begin(cid, candidate, champion.version, decision.action.reason)
        promoted = False
        if decision.step == "promote" and candidate is not None:
            ctx.registry.promote(
                ctx.name,
                candidate,
                by="deployer-agent",
                reason=decision.action.reason,
                key=f"{cid}:promote",
            )
            ctx.on_champion_changed()
            promoted = True
        ctx.record(decision.action, cid, "deployer:promote")
        ctx.reporter.info(f"[deployer] {decision.action.reason}")
        return {"promoted": promoted}
