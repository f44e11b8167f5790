"""The report node: what the cycle's retraining bought against its prediction (the data
agent's history); the optional LLM advisor explains the cycle in the audit log, within
the agent-token budget; it never acts."""

from __future__ import annotations

from typing import Any

from adapters.llm import AdvisorError
from adapters.store.ledger import today_utc
from agents.actions import Action
from agents.advisor import AdviceObservation, decide_advice
from controller.context import CycleState, LineContext
from controller.retrain_value import record_outcome


class ReportNode:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        record_outcome(ctx, cid, dict(state))  # what the retraining bought, beside its forecast
        spec = ctx.policy.advisor
        key = f"{cid}:advisor:explain"
        if ctx.advisor is None or spec is None or ctx.audit.has_key(key):
            return {}
        events = [e for e in ctx.audit.events(cycle_id=cid) if e.agent != "controller"]
        question = "What did this production cycle decide, and why?\n" + "\n".join(
            f"- {e.agent}/{e.action}: {e.outcome}: {e.reason}" for e in events
        )
        used = ctx.ledger.totals(ctx.name, day=today_utc(), kind="llm").tokens
        gate = decide_advice(
            AdviceObservation(used_today=used, prompt_tokens_estimate=len(question) // 3 + 64),
            ctx.policy,
        )
        if gate.outcome != "taken":
            ctx.record(gate, cid, "advisor:explain")
            return {}
        try:
            answer = ctx.advisor.explain(question, spec.max_tokens)
        except AdvisorError as exc:
            failed = Action(
                "advisor",
                "explain",
                "failed",
                f"advisor unavailable: {exc}",
                gate.figures | {"model": spec.model},
            )
            ctx.record(failed, cid, "advisor:explain")
            return {}
        ctx.ledger.record(
            key=key,
            policy_name=ctx.name,
            cycle_id=cid,
            kind="llm",
            tokens=answer.total_tokens,
            joules=0.0,
            method="unmetered",
        )
        figures = gate.figures | {
            "model": answer.model,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }
        explained = Action(
            "advisor", "explain", "taken", answer.text[:4000] or "(empty answer)", figures
        )
        ctx.record(explained, cid, "advisor:explain")
        ctx.reporter.info(f"[advisor] {answer.text[:300]}")
        return {}
