"""The production cycle as a LangGraph StateGraph, checkpointed after every node.

    data -> energy -> trainer -> evaluator -> [approval] -> deployer -> [canary]* -> report
      \\________ nothing to do / refused / deferred / no candidate _______/     |  ^
                                                              canary_review (paused)

This module only wires: each node lives in `controller/nodes/`, each decision in `agents/`.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from controller.context import CycleState, LineContext
from controller.nodes.approval import ApprovalNode
from controller.nodes.canary import RolloutStage
from controller.nodes.data import DataNode
from controller.nodes.deployer import DeployerNode
from controller.nodes.energy import EnergyNode
from controller.nodes.evaluator import EvaluatorNode
from controller.nodes.report import ReportNode
from controller.nodes.timing import timed
from controller.nodes.trainer import TrainerNode

#: LangGraph counts every node run; a canary loops over its steps (and their extensions).
RECURSION_LIMIT = 1000


def build_cycle_graph(ctx: LineContext, checkpointer: Any) -> Any:
    rollout = RolloutStage(ctx)
    g = StateGraph(CycleState)
    g.add_node("data", timed("data", DataNode(ctx)))
    g.add_node("energy", timed("energy", EnergyNode(ctx)))
    g.add_node("trainer", timed("trainer", TrainerNode(ctx)))
    g.add_node("evaluator", timed("evaluator", EvaluatorNode(ctx)))
    g.add_node("approval", timed("approval", ApprovalNode(ctx)))
    g.add_node("deployer", timed("deployer", DeployerNode(ctx, rollout)))
    g.add_node("canary", timed("canary", rollout.canary))
    g.add_node("canary_review", rollout.canary_review)
    g.add_node("report", timed("report", ReportNode(ctx)))
    g.add_edge(START, "data")
    g.add_conditional_edges(
        "data", lambda s: "energy" if s.get("retrain") else "report", ["energy", "report"]
    )
    g.add_conditional_edges(
        "energy",
        lambda s: "trainer" if (s.get("allowance") or {}).get("trials") else "report",
        ["trainer", "report"],
    )
    g.add_conditional_edges(
        "trainer",
        lambda s: "evaluator" if s.get("candidate_version") else "report",
        ["evaluator", "report"],
    )

    def after_eval(state: CycleState) -> str:
        if state.get("blessed") and ctx.policy.approval == "required":
            return "approval"
        return "deployer"

    g.add_conditional_edges("evaluator", after_eval, ["approval", "deployer"])
    g.add_edge("approval", "deployer")
    g.add_conditional_edges("deployer", _after_rollout_step, ["canary", "report"])
    g.add_conditional_edges("canary", _after_rollout_step, ["canary", "canary_review", "report"])
    g.add_conditional_edges("canary_review", _after_rollout_step, ["canary", "report"])
    g.add_edge("report", END)
    return g.compile(checkpointer=checkpointer)


def _after_rollout_step(state: CycleState) -> str:
    rollout = state.get("rollout")
    if rollout == "running":
        return "canary"
    if rollout == "paused":
        return "canary_review"
    return "report"
