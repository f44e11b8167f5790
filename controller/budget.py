"""The factory's shared budgets at run time: each line's demand and its trials' reservations,
handed to the allocation agent (`agents/allocation.py`), which decides the shares.

A trial reserves its tokens and joules before it starts and keeps the reservation until it
is settled on the ledger, so concurrent trials of several lines cannot overrun a shared
limit together; the worker stops a trial at its reserved joules (checked every second), so
a line overshoots its allowance by at most one reporting interval.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from adapters.store.audit import AuditLog
from adapters.store.ledger import Ledger, day_totals_by_line, today_utc
from agents.actions import Action
from agents.allocation import (
    AllocationDecision,
    FactoryObservation,
    LineAllowance,
    LineClaim,
    decide_allocation,
)
from agents.energy import J_PER_KWH, EnergyObservation
from policies.factory import FactoryPolicy, LineSpec
from policies.model import Policy


@dataclass(frozen=True)
class Share:
    """The energy agent's observation with the line's share filled in."""

    observation: EnergyObservation
    allowance: LineAllowance


@dataclass(frozen=True)
class Grant:
    tokens: int
    joules: float
    action: Action | None  # why the grant is less than was asked (None: all of it)


@dataclass
class _Demand:
    trials: int = 0
    tokens_per_trial: int = 0
    joules_per_trial: float = 0.0


def eval_key(cid: str) -> str:
    """The reservation of a cycle's evaluation."""
    return f"{cid}:eval"


class FactoryBudget:
    def __init__(self, spec: FactoryPolicy, ledger: Ledger, audit: AuditLog) -> None:
        self.spec = spec
        self.ledger, self.audit = ledger, audit
        self._lock = threading.Lock()
        self._lines: dict[str, tuple[LineSpec, Policy]] = {}
        self._demand: dict[str, _Demand] = {}
        self._reserved: dict[str, tuple[str, int, float]] = {}  # trial key -> line, tokens, J
        self._previous: dict[str, LineAllowance] = {}

    def set_lines(self, lines: dict[str, tuple[LineSpec, Policy]], spec: FactoryPolicy) -> None:
        """The factory file changed (or a line's policy): who claims, with which weights."""
        with self._lock:
            self._lines = dict(lines)
            self.spec = spec

    def line(self, name: str) -> LineBudget:
        return LineBudget(self, name)

    def allocate(self) -> AllocationDecision:
        """Call with the lock held: the decision over every line's current claim."""
        spent = day_totals_by_line(self.ledger, today_utc())
        for line, tokens, joules in self._reserved.values():
            t, j = spent.get(line, (0, 0.0))
            spent[line] = (t + tokens, j + joules)
        claims = tuple(self._claim(name, spent.get(name, (0, 0.0))) for name in self._lines)
        obs = FactoryObservation(
            spent_tokens_today=sum(t for t, _ in spent.values()),
            spent_joules_today=sum(j for _, j in spent.values()),
            lines=claims,
        )
        decision = decide_allocation(obs, self.spec)
        self._previous.update(decision.allowances)
        return decision

    def _claim(self, name: str, spent: tuple[int, float]) -> LineClaim:
        spec, policy = self._lines[name]
        demand = self._demand.get(name, _Demand())
        previous = self._previous.get(name)
        b = policy.budgets
        return LineClaim(
            line=name,
            owner=spec.owner,
            priority=spec.priority,
            weight=spec.weight,
            guarantee_pct=spec.guarantee_pct,
            spent_tokens=spent[0],
            spent_joules=spent[1],
            demand_trials=demand.trials,
            tokens_per_trial=demand.tokens_per_trial or b.tokens_per_trial,
            joules_per_trial=demand.joules_per_trial,
            cap_tokens=b.training_tokens_per_day,
            cap_joules=b.energy_kwh_per_day * J_PER_KWH,
            previous_tokens=previous.allowed_tokens if previous else None,
            previous_joules=previous.allowed_joules if previous else None,
        )


class LineBudget:
    """One line's handle on the factory's budgets (what its energy and trainer nodes use)."""

    def __init__(self, factory: FactoryBudget, name: str) -> None:
        self.factory, self.name = factory, name

    def plan(self, cid: str, obs: EnergyObservation, policy: Policy, eval_j: float) -> Share:
        """Ask for the cycle's trials; the line's share goes into the energy observation,
        and the allocation is audited with its figures. The cycle's evaluation (`eval_j`,
        expected) is reserved first: it comes after the trials and counts against the same
        day, so trials that spent the whole share would overrun it."""
        jpt = obs.joules_per_token or policy.energy.prior_joules_per_token
        tokens = policy.budgets.tokens_per_trial
        f = self.factory
        with f._lock:
            f._demand[self.name] = _Demand(policy.tuning.trials_per_cycle, tokens, tokens * jpt)
            f._reserved[eval_key(cid)] = (self.name, 0, eval_j)
            decision = f.allocate()
        allowance = decision.allowances[self.name]
        action = decision.actions[list(decision.allowances).index(self.name)]
        f.audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=f"{self.name}: {action.reason}",
            figures=action.figures | {"factory": decision.figures},
            cycle_id=cid,
            policy_version=policy.version,
            key=f"{cid}:energy:allocate",
            line=self.name,
        )
        shared = replace(
            obs,
            share_tokens_left=allowance.tokens_left,
            share_joules_left=allowance.joules_left,
            share_reason=allowance.reason,
        )
        return Share(shared, allowance)

    def want(self, trials: int) -> None:
        """How many more trials the line wants now (0: idle, its share is lendable)."""
        f = self.factory
        with f._lock:
            f._demand.setdefault(self.name, _Demand()).trials = trials

    def reserve(self, key: str, tokens: int, joules: float) -> Grant:
        """Reserve a trial's tokens and joules, at most the line's current allowance."""
        f = self.factory
        with f._lock:
            demand = f._demand.setdefault(self.name, _Demand())
            demand.trials = max(demand.trials, 1)
            if demand.joules_per_trial <= 0:  # a resumed cycle: its plan was made before
                demand.tokens_per_trial, demand.joules_per_trial = tokens, joules
            allowance = f.allocate().allowances[self.name]
            t = tokens if allowance.tokens_left is None else min(tokens, allowance.tokens_left)
            j = joules if allowance.joules_left is None else min(joules, allowance.joules_left)
            t, j = max(0, int(t)), max(0.0, j)
            if t > 0 and j > 0:
                f._reserved[key] = (self.name, t, j)
            demand.trials = max(0, demand.trials - 1)
        if t >= tokens and j >= joules:
            return Grant(t, j, None)
        outcome = "refused" if t <= 0 or j <= 0 else "taken"
        return Grant(
            t,
            j,
            Action(
                "energy",
                "reserve_trial",
                outcome,  # type: ignore[arg-type]
                f"the factory's shared budgets grant this trial {t:,} of {tokens:,} tokens and "
                f"{j:,.0f} of {joules:,.0f} J ({allowance.reason})",
                {
                    "asked_tokens": tokens,
                    "asked_joules": round(joules, 3),
                    "granted_tokens": t,
                    "granted_joules": round(j, 3),
                },
            ),
        )

    def release(self, key: str) -> None:
        """The trial is on the ledger now (or never ran): its reservation ends."""
        f = self.factory
        with f._lock:
            f._reserved.pop(key, None)
