"""Running one line's cycles through the graph: start or resume from the checkpoint, hand a
person's answer to a paused cycle, retry a failed step by the retry rules, and record how
each cycle ended."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langgraph.types import Command

from adapters.store.rollouts import ACTIVE as ROLLOUT_ACTIVE
from controller.budget import eval_key
from controller.context import CycleInterrupted, LineContext
from controller.cycle_cost import CycleCpu, controller_figures
from controller.graph import RECURSION_LIMIT
from controller.nodes.canary import FINAL as ROLLOUT_FINAL
from controller.nodes.canary import roll_back
from controller.retry import retry_rule


@dataclass
class CycleRun:
    cycle_id: str
    trigger: str
    status: str
    stage_s: dict[str, float] = field(default_factory=dict)
    promoted: bool = False
    candidate: int | None = None
    blessed: bool | None = None
    ended_after_s: float = 0.0


class CycleRunner:
    def __init__(
        self,
        ctx: LineContext,
        graph: Any,
        say: Callable[[str], None],
        retry_later: Callable[[str, float], None],
        deferred: Callable[[float], None],
        started: float,
    ) -> None:
        self.ctx, self.graph, self._say = ctx, graph, say
        self._retry_later = retry_later  # (cycle id, delay): request a resume after the delay
        self._deferred = deferred  # hours: come back when the energy window opens
        self.started = started
        self.runs: list[CycleRun] = []
        self._attempts: dict[str, int] = {}
        self._cpu = CycleCpu(lambda: ctx.booked_cpu.total)

    def run(self, trigger: str, resume_id: str | None = None) -> CycleRun | None:
        """Run (or resume) one cycle to its end, a pause for a person, or an interruption."""
        ctx = self.ctx
        mark = self._cpu.mark()
        if resume_id is not None:
            prepared = self._prepare_resume(resume_id, trigger)
            if prepared is None or isinstance(prepared, CycleRun):
                return prepared
            cid, trigger, payload = prepared
        else:
            cid, payload = self._start(trigger)
        config = {"configurable": {"thread_id": cid}, "recursion_limit": RECURSION_LIMIT}
        try:
            result = self.graph.invoke(payload, config, durability="sync")
        except Exception as exc:
            self._cpu.add(cid, mark)
            if not isinstance(exc, CycleInterrupted) and not ctx.stop_event.is_set():
                return self._failed(cid, trigger, exc)
            # stopping: whatever broke under a closing store is no failure of the cycle
            ctx.audit.append(
                agent="controller",
                action="interrupt_cycle",
                outcome="deferred",
                reason=f"stopping; {cid} is checkpointed and resumes on restart",
                figures={},
                cycle_id=cid,
                policy_version=ctx.policy.version,
            )
            return None
        self._attempts.pop(cid, None)
        self._cpu.add(cid, mark)
        if result.get("__interrupt__"):
            ctx.book.finish(cid, "awaiting_approval", {})
            self._say(f"[daemon] {cid} awaits a person (aifactory status shows the id)")
            return CycleRun(cid, trigger, "awaiting_approval")
        return self.finish(cid, trigger, result)

    def _start(self, trigger: str) -> tuple[str, dict[str, Any]]:
        ctx = self.ctx
        row = ctx.book.start(ctx.name, ctx.policy.version, trigger)
        ctx.audit.append(
            agent="controller",
            action="start_cycle",
            outcome="taken",
            reason=f"cycle {row.number} of {ctx.name} started ({trigger})",
            figures={"trigger": trigger, "line": ctx.name},
            cycle_id=row.id,
            policy_version=ctx.policy.version,
            key=f"{row.id}:start",
        )
        self._say(f"[daemon] cycle {row.id} ({trigger}) at {time.monotonic() - self.started:.1f}s")
        return row.id, {"cycle_id": row.id, "trigger": trigger}

    def _prepare_resume(
        self, cycle_id: str, trigger: str
    ) -> tuple[str, str, Any] | CycleRun | None:
        """(cycle id, trigger, graph input) to resume with, a finished run, or None."""
        ctx = self.ctx
        row = ctx.book.get(cycle_id)
        if row is None or row.status not in ("running", "awaiting_approval"):
            return None  # already finished: a duplicate request
        config = {"configurable": {"thread_id": row.id}, "recursion_limit": RECURSION_LIMIT}
        snapshot = self.graph.get_state(config)
        if snapshot.next and snapshot.interrupts:
            answer = self.answer(row.id, snapshot.interrupts)
            if answer is None:
                if row.status != "awaiting_approval":
                    ctx.book.finish(row.id, "awaiting_approval", {})
                return CycleRun(row.id, trigger, "awaiting_approval")
            payload: Any = Command(resume=answer)
        elif snapshot.next:
            payload = None
        elif snapshot.values:
            # the graph ended but the daemon died before recording it
            return self.finish(row.id, row.trigger, dict(snapshot.values))
        else:
            payload = {"cycle_id": row.id, "trigger": row.trigger}
        self._say(f"[daemon] resuming cycle {row.id}")
        ctx.audit.append(
            agent="controller",
            action="resume_cycle",
            outcome="taken",
            reason=f"resuming {row.id} from its last checkpoint"
            + (f" before {', '.join(snapshot.next)}" if snapshot.next else ""),
            figures={"next": list(snapshot.next)},
            cycle_id=row.id,
            policy_version=ctx.policy.version,
        )
        if row.status != "running":
            ctx.book.finish(row.id, "running", {})
        return row.id, row.trigger, payload

    def answer(self, cycle_id: str, interrupts: Any) -> dict[str, Any] | None:
        """A person's answer to the cycle's pending interrupt: a promotion approval or a
        paused canary step (None while nobody has answered)."""
        ctx = self.ctx
        kinds = {getattr(i, "value", {}).get("kind", "approval") for i in interrupts}
        if "canary" in kinds:
            rollout = ctx.rollouts.for_cycle(cycle_id) if ctx.rollouts else None
            if rollout is None:
                return None
            if rollout.status in ROLLOUT_FINAL:
                # decided before a crash: the node finishes what the row says
                return {"approved": rollout.status == "promoted", "by": "", "reason": ""}
            if rollout.decision is None:
                return None
            return {
                "approved": rollout.decision == "continue",
                "by": rollout.decided_by,
                "reason": rollout.decision_reason,
            }
        answer = next(
            (
                a
                for a in ctx.book.approvals(ctx.name)
                if a.cycle_id == cycle_id and a.status in ("approved", "rejected")
            ),
            None,
        )
        if answer is None:
            return None
        return {
            "approved": answer.status == "approved",
            "by": answer.decided_by,
            "reason": answer.reason,
        }

    def _failed(self, cycle_id: str, trigger: str, exc: Exception) -> CycleRun | None:
        """A failed step is retried from its checkpoint by the retry rules; then it fails."""
        ctx = self.ctx
        attempt = self._attempts.get(cycle_id, 0) + 1
        self._attempts[cycle_id] = attempt
        error = f"{type(exc).__name__}: {exc}"
        rule = retry_rule(exc, attempt, ctx.runtime.cycle_retry_delays_s)
        if rule.retry:
            ctx.audit.append(
                agent="controller",
                action="retry_cycle",
                outcome="deferred",
                reason=f"cycle {cycle_id} attempt {attempt} failed ({error}); retrying from its "
                f"last checkpoint in {rule.delay_s:g}s",
                figures={"attempt": attempt, "error": error[:500], "delay_s": rule.delay_s},
                cycle_id=cycle_id,
                policy_version=ctx.policy.version,
            )
            self._say(f"[daemon] cycle {cycle_id} attempt {attempt} failed: {error}; retrying")
            self._retry_later(cycle_id, rule.delay_s)
            return None
        self._cpu.take(cycle_id)  # nothing to report it in
        ctx.book.finish(cycle_id, "failed", {"error": error[:2000]})
        if ctx.budget is not None:
            ctx.budget.release(eval_key(cycle_id))  # a failed cycle evaluates nothing
        self._end_rollout(cycle_id, error)
        ctx.audit.append(
            agent="controller",
            action="finish_cycle",
            outcome="failed",
            reason=f"cycle {cycle_id} failed after {attempt} attempt(s): {error}",
            figures={"attempts": attempt, "error": error[:2000]},
            cycle_id=cycle_id,
            policy_version=ctx.policy.version,
            key=f"{cycle_id}:finish",
        )
        self._say(f"[daemon] cycle {cycle_id} FAILED: {error}")
        run = CycleRun(cycle_id, trigger, "failed", ended_after_s=time.monotonic() - self.started)
        self.runs.append(run)
        return run

    def _end_rollout(self, cycle_id: str, error: str) -> None:
        """A canary nobody judges any more must not keep its share of traffic."""
        ctx = self.ctx
        row = ctx.rollouts.for_cycle(cycle_id) if ctx.rollouts else None
        if row is None or row.status not in ROLLOUT_ACTIVE:
            return
        reason = f"cycle {cycle_id} failed during the rollout: {error[:300]}"
        roll_back(
            ctx, cycle_id, row.challenger_version, reason, {"step": row.step}, by="controller"
        )

    def finish(self, cycle_id: str, trigger: str, state: dict[str, Any]) -> CycleRun:
        ctx = self.ctx
        summary = self._summary(cycle_id, state)
        if state.get("defer_for_h"):
            summary["deferred_for_h"] = round(state["defer_for_h"], 3)
            self._deferred(float(state["defer_for_h"]))
        ctx.book.finish(cycle_id, "completed", summary)
        ctx.audit.append(
            agent="controller",
            action="finish_cycle",
            outcome="taken",
            reason=f"cycle {cycle_id} completed",
            figures=summary,
            cycle_id=cycle_id,
            policy_version=ctx.policy.version,
            key=f"{cycle_id}:finish",
        )
        elapsed = time.monotonic() - self.started
        self._say_done(cycle_id, elapsed, summary)
        run = CycleRun(
            cycle_id,
            trigger,
            "completed",
            summary["stage_s"],
            bool(state.get("promoted")),
            state.get("candidate_version"),
            state.get("blessed"),
            elapsed,
        )
        self.runs.append(run)
        return run

    def _summary(self, cycle_id: str, state: dict[str, Any]) -> dict[str, Any]:
        """The cycle's figures: trials, verdict, energy by kind, stages, the controller's cost."""
        ctx = self.ctx
        train = ctx.ledger.totals(ctx.name, cycle_id=cycle_id, kind="train")
        evals = ctx.ledger.totals(ctx.name, cycle_id=cycle_id, kind="eval")
        return {
            "trials": len(state.get("trials") or []),
            "candidate": state.get("candidate_version"),
            "blessed": state.get("blessed"),
            "promoted": bool(state.get("promoted")),
            "train_tokens": train.tokens,
            "train_joules": round(train.joules, 3),
            "eval_tokens": evals.tokens,
            "eval_joules": round(evals.joules, 3),
            "energy_method": train.method if train.tokens else evals.method,
            "stage_s": dict(state.get("stage_s") or {}),
            **controller_figures(
                self._cpu.take(cycle_id),
                ctx.policy.energy.watts_per_core,
                train.joules,
                evals.joules,
                upper_bound=ctx.shares_clock,
            ),
        }

    def _say_done(self, cycle_id: str, elapsed: float, summary: dict[str, Any]) -> None:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in ordered_stages(summary["stage_s"]))
        self._say(f"[daemon] cycle {cycle_id} done at {elapsed:.1f}s since start; stages: {stages}")
        share = summary.get("controller_share_pct")
        if share is None:
            return
        cpu, bound = summary["controller_cpu_s"], summary["controller_upper_bound"]
        self._say(
            f"[daemon] the controller itself: {'at most ' if bound else ''}{cpu:.2f} s CPU, "
            f"{share:.2f}% of the cycle's energy (estimated"
            + ("; serving or other lines share this process's clock)" if bound else ")")
        )


STAGES = ("data", "energy", "trainer", "evaluator", "approval", "deployer", "report")


def ordered_stages(stage_s: dict[str, float]) -> list[tuple[str, float]]:
    """Stages in the order the graph runs them."""
    return sorted(stage_s.items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else 99)
