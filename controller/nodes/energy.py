"""The energy node: today's ledger (and the line's share of the factory's budgets) against
the policy's budgets and windows; how many trials this cycle may run."""

from __future__ import annotations

import time
from typing import Any

from adapters.store.ledger import today_utc
from agents.energy import EnergyObservation, decide_energy, hour_of_day_utc
from controller.budget import eval_key
from controller.context import CycleState, LineContext


class EnergyNode:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        obs = self._observe(state)
        if ctx.budget is not None:  # a factory: ask for this line's share first (audited)
            share = ctx.budget.plan(cid, obs, ctx.policy, self._expected_eval_j(obs))
            obs = share.observation
        decision = decide_energy(obs, ctx.policy)
        for i, action in enumerate(decision.actions):
            ctx.record(action, cid, f"energy:{action.action}:{i}")
        ctx.reporter.info(f"[energy] {decision.actions[-1].reason}")
        a = decision.allowance
        if ctx.budget is not None:
            ctx.budget.want(a.trials if a else 0)
            if not a or not a.trials:
                ctx.budget.release(eval_key(cid))  # no trials, nothing to evaluate
        return {
            "allowance": None if a is None else a.__dict__.copy(),
            "defer_for_h": decision.defer_for_h,
        }

    def _expected_eval_j(self, obs: EnergyObservation) -> float:
        """A cycle's evaluation energy: the line's average so far, else a prior (forward
        passes over both held-out sets for two models, about a third of training's J/token)."""
        ctx = self.ctx
        done = ctx.book.completed_count(ctx.name)
        evals = ctx.ledger.totals(ctx.name, kind="eval")
        if done and evals.joules > 0:
            return evals.joules / done
        jpt = obs.joules_per_token or ctx.policy.energy.prior_joules_per_token
        return 4 * ctx.policy.data.eval_max_bytes * jpt / 3

    def _observe(self, state: CycleState) -> EnergyObservation:
        ctx = self.ctx
        day_tokens = ctx.ledger.totals(ctx.name, day=today_utc(), kind="train").tokens
        day_joules = ctx.ledger.totals(ctx.name, day=today_utc()).joules  # every kind costs
        history = ctx.ledger.totals(ctx.name, kind="train")
        new_since = state.get("new_since")
        now = time.time()
        return EnergyObservation(
            day_tokens=day_tokens,
            day_joules=day_joules,
            joules_per_token=history.joules / history.tokens if history.tokens else None,
            energy_method=history.method,
            hour_utc=hour_of_day_utc(now),
            champion_new_bpb=state.get("champion_new_bpb"),
            deferred_h=max(0.0, (now - new_since) / 3600.0) if new_since else 0.0,
        )
