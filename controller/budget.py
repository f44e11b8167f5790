"""The factory's shared budgets at run time: each line's demand and its trials' reservations,
handed to the allocation agent (`agents/allocation.py`), which decides the shares.

A trial reserves its tokens and joules before it starts and keeps the reservation until it
is settled on the ledger, so concurrent trials of several lines cannot overrun a shared
limit together; the worker stops a trial at its reserved joules (checked every second), so
a line overshoots its allowance by at most one reporting interval. A cycle's evaluation is
reserved (at an estimate) when the cycle plans its trials. A line whose share holds no
useful part of a trial waits while other lines are training (what they leave unspent comes
back), and stops when nothing can come back today.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.store.audit import AuditLog
from adapters.store.ledger import Ledger, day_totals_by_line, today_utc
from agents.actions import Action
from agents.allocation import (
    PARTIAL_TRIAL,
    AllocationDecision,
    FactoryObservation,
    LineAllowance,
    LineClaim,
    decide_allocation,
)
from agents.energy import J_PER_KWH, EnergyObservation
from policies.factory import FactoryPolicy, LineSpec
from policies.model import Policy

#: How often a line waiting for a share looks again without being told (a release tells it).
_WAIT_S = 1.0
_EVAL_SUFFIX = ":eval"


def eval_key(cid: str) -> str:
    """The reservation of a cycle's evaluation."""
    return cid + _EVAL_SUFFIX


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


@dataclass
class _Claimant:
    spec: LineSpec
    policy: Policy
    demand: _Demand = field(default_factory=_Demand)
    previous: LineAllowance | None = None


class FactoryBudget:
    def __init__(self, spec: FactoryPolicy, ledger: Ledger, audit: AuditLog) -> None:
        self.spec = spec
        self.ledger, self.audit = ledger, audit
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a reservation ended
        self._lines: dict[str, _Claimant] = {}
        self._reserved: dict[str, tuple[str, int, float]] = {}  # key -> line, tokens, joules
        self._waiting: set[str] = set()  # lines waiting in `reserve` for a share

    # the factory's side ------------------------------------------------------------------

    def set_spec(self, spec: FactoryPolicy) -> None:
        with self._lock:
            self.spec = spec

    def set_line(self, name: str, spec: LineSpec, policy: Policy) -> None:
        """A line joined, or its factory entry or its policy changed."""
        with self._lock:
            claimant = self._lines.get(name)
            if claimant is None:
                self._lines[name] = _Claimant(spec, policy)
            else:
                claimant.spec, claimant.policy = spec, policy

    def drop_line(self, name: str) -> None:
        """A drained line is gone: it claims nothing more (what it spent still counts)."""
        with self._changed:
            self._lines.pop(name, None)
            self._changed.notify_all()

    def line(self, name: str) -> LineBudget:
        return LineBudget(self, name)

    # decisions (call with the lock held) -------------------------------------------------

    def _allocate(self) -> AllocationDecision:
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
        for name, allowance in decision.allowances.items():
            self._lines[name].previous = allowance
        return decision

    def _claim(self, name: str, spent: tuple[int, float]) -> LineClaim:
        c = self._lines[name]
        b = c.policy.budgets
        return LineClaim(
            line=name,
            owner=c.spec.owner,
            priority=c.spec.priority,
            weight=c.spec.weight,
            guarantee_pct=c.spec.guarantee_pct,
            spent_tokens=spent[0],
            spent_joules=spent[1],
            demand_trials=c.demand.trials,
            tokens_per_trial=c.demand.tokens_per_trial or b.tokens_per_trial,
            joules_per_trial=c.demand.joules_per_trial,
            cap_tokens=b.training_tokens_per_day,
            cap_joules=b.energy_kwh_per_day * J_PER_KWH,
            previous_tokens=c.previous.allowed_tokens if c.previous else None,
            previous_joules=c.previous.allowed_joules if c.previous else None,
        )

    def _others_active(self, name: str) -> bool:
        """Is another line's training under way: a trial holding a reservation, or trials
        still wanted by a line that is not itself waiting for a share? What they leave
        unspent comes back, so waiting for them is worth it. (Evaluations never count, and
        neither do lines that wait: two lines never wait for each other.)"""
        for key, (line, _, _) in self._reserved.items():
            if line != name and not key.endswith(_EVAL_SUFFIX):
                return True
        return any(
            other != name and c.demand.trials > 0 and other not in self._waiting
            for other, c in self._lines.items()
        )

    # the lines' side ------------------------------------------------------------------------

    def plan(self, name: str, cid: str, want: _Demand, eval_j: float) -> tuple[Any, bool]:
        """(the decision, whether others' trials hold reservations) for a cycle's plan."""
        with self._lock:
            self._lines[name].demand = want
            self._reserved[eval_key(cid)] = (name, 0, eval_j)
            return self._allocate(), self._others_active(name)

    def want(self, name: str, trials: int, joules_per_trial: float | None = None) -> None:
        """How many more trials the line wants, and what each costs as measured so far."""
        with self._changed:
            if name in self._lines:
                demand = self._lines[name].demand
                demand.trials = trials
                if joules_per_trial:
                    demand.joules_per_trial = joules_per_trial
            self._changed.notify_all()  # a line that wants less may free the others

    def reserve(
        self,
        name: str,
        key: str,
        ask: tuple[int, float, float],
        stop: threading.Event | None,
        wait: bool = True,
    ) -> tuple[int, float, str]:
        """(tokens, joules, why) reserved for a trial that may use up to `ask` = (tokens,
        joules, and the joules it is expected to need); waits (unless told not to) while
        the share holds less than a useful part of it and other lines' trials hold
        reservations."""
        tokens, joules, expected_j = ask
        with self._changed:
            demand = self._lines[name].demand
            demand.trials = max(demand.trials, 1)
            if demand.joules_per_trial <= 0:  # a resumed cycle: its plan was made before
                demand.tokens_per_trial, demand.joules_per_trial = tokens, joules
            while True:
                allowance = self._allocate().allowances[name]
                t, j = _cap(tokens, allowance.tokens_left), _cap(joules, allowance.joules_left)
                need_j = min(joules, expected_j) if expected_j > 0 else joules
                useful = t >= PARTIAL_TRIAL * tokens and j >= PARTIAL_TRIAL * need_j
                stopping = stop is not None and stop.is_set()
                if useful or stopping or not wait or not self._others_active(name):
                    break
                self._waiting.add(name)
                try:
                    self._changed.wait(_WAIT_S)
                finally:
                    self._waiting.discard(name)
            if not useful:
                t, j = 0, 0.0
            if t > 0 and j > 0:
                self._reserved[key] = (name, t, j)
            demand.trials = max(0, demand.trials - 1)
        return t, j, allowance.reason

    def release(self, key: str) -> None:
        with self._changed:
            self._reserved.pop(key, None)
            self._changed.notify_all()


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
        want = _Demand(policy.tuning.trials_per_cycle, tokens, tokens * jpt)
        decision, pending = self.factory.plan(self.name, cid, want, eval_j)
        allowance = decision.allowances[self.name]
        action = decision.actions[list(decision.allowances).index(self.name)]
        self.factory.audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=action.reason,
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
            share_trials=allowance.trials,
            share_pending=pending,
            share_reason=allowance.reason,
        )
        return Share(shared, allowance)

    def want(self, trials: int, joules_per_trial: float | None = None) -> None:
        """How many more trials the line wants now (0: idle, its share is lendable), and
        what one costs as measured in this cycle (the plan's estimate until then)."""
        self.factory.want(self.name, trials, joules_per_trial)

    def reserve(
        self,
        key: str,
        tokens: int,
        joules: float,
        stop: threading.Event | None = None,
        expected_j: float = 0.0,
        wait: bool = True,
    ) -> Grant:
        """Reserve a trial's tokens and joules (at most what it may use, at most the line's
        current allowance); `expected_j`, what it should need, says what is worth running.
        ``wait=False``: answer at once (the line has trials of its own running)."""
        t, j, reason = self.factory.reserve(
            self.name, key, (tokens, joules, expected_j), stop, wait
        )
        return _grant(tokens, min(joules, expected_j) if expected_j > 0 else joules, t, j, reason)

    def release(self, key: str) -> None:
        """The trial is on the ledger now (or never ran): its reservation ends, and lines
        waiting for a share look again."""
        self.factory.release(key)


def _cap(asked: float, left: float | None) -> Any:
    value = asked if left is None else min(asked, left)
    return max(0, int(value)) if isinstance(asked, int) else max(0.0, value)


def _grant(tokens: int, joules: float, t: int, j: float, reason: str) -> Grant:
    """The reservation, with an audit action when it holds less than the trial needs
    (`joules`: its expected need, or what it asked without an estimate)."""
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
            f"{j:,.0f} of {joules:,.0f} J ({reason})",
            {
                "asked_tokens": tokens,
                "asked_joules": round(joules, 3),
                "granted_tokens": t,
                "granted_joules": round(j, 3),
            },
        ),
    )
