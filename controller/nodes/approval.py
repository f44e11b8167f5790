"""The approval node (policy `approval: required`): a LangGraph interrupt that waits for
`aifactory approve|reject`; the pause is checkpointed and survives restarts."""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from agents.actions import Action
from controller.context import CycleState, LineContext


class ApprovalNode:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        version = int(state["candidate_version"] or 0)
        request = ctx.book.request_approval(ctx.name, cid, version)
        ctx.record(
            Action(
                "deployer",
                "request_approval",
                "deferred",
                f"v{version} awaits a person: `aifactory approve {request.id}` or "
                f"`aifactory reject {request.id} --reason ...`",
                {"approval_id": request.id, "candidate": version},
            ),
            cid,
            "deployer:request_approval",
        )
        answer = interrupt({"approval_id": request.id, "candidate_version": version})
        approved = bool(answer.get("approved"))
        ctx.record(
            Action(
                "deployer",
                "approval",
                "taken" if approved else "refused",
                f"{'approved' if approved else 'rejected'} by {answer.get('by', '?')}: "
                f"{answer.get('reason', '')}",
                {"approval_id": request.id, "by": answer.get("by"), "reason": answer.get("reason")},
            ),
            cid,
            "deployer:approval",
        )
        return {"approved": approved}
