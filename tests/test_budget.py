"""The factory's shared budgets at run time: reservations keep concurrent trials of several
lines within the limits; an idle line's share is lent and taken back; every plan audited."""

from __future__ import annotations

from adapters.store.audit import AuditLog
from adapters.store.db import Store
from adapters.store.ledger import Ledger
from agents.energy import EnergyObservation
from controller.budget import FactoryBudget, eval_key
from policies.factory import FactoryPolicy, LineSpec
from policies.loader import parse_policy

TRIAL_J = 1000.0  # 100,000 tokens at 0.01 J/token


def _budget(store: Store, kwh: float = 3000 / 3.6e6) -> FactoryBudget:
    spec = FactoryPolicy(
        name="f",
        limits={"energy_kwh_per_day": kwh, "slots": 2},
        lines=[
            LineSpec(policy="a.yaml", owner="ta", priority=10, guarantee_pct=50),
            LineSpec(policy="b.yaml", owner="tb", priority=1),
        ],
    )
    budget = FactoryBudget(spec, Ledger(store), AuditLog(store))
    lines = {}
    for spec_line, name in zip(spec.lines, ("a", "b"), strict=True):
        policy = parse_policy(
            f"name: {name}\nbudgets: {{tokens_per_trial: 100000}}\n"
            "energy: {prior_joules_per_token: 0.01}\ntuning: {trials_per_cycle: 3}"
        )
        lines[name] = (spec_line, policy)
    budget.set_lines(lines, spec)
    return budget


def _obs() -> EnergyObservation:
    return EnergyObservation(0, 0.0, None, "estimated")


def test_concurrent_reservations_never_exceed_the_factory_limit(store: Store) -> None:
    budget = _budget(store)
    a, b = budget.line("a"), budget.line("b")
    grants = [a.reserve("a:1", 100_000, TRIAL_J), b.reserve("b:1", 100_000, TRIAL_J)]
    grants += [a.reserve("a:2", 100_000, TRIAL_J), b.reserve("b:2", 100_000, TRIAL_J)]
    assert sum(g.joules for g in grants) <= 3000 + 1e-6
    assert grants[-1].joules == 0 and grants[-1].action is not None
    assert grants[-1].action.outcome == "refused"
    budget.line("a").release("a:1")  # released without a ledger row: it never ran
    again = b.reserve("b:3", 100_000, TRIAL_J)
    assert again.joules > 0


def test_spend_on_the_ledger_counts_and_an_idle_guarantee_is_lent(store: Store) -> None:
    budget = _budget(store)
    b = budget.line("b")
    # line a is idle: b (low priority, no guarantee) may borrow a's share
    grant = b.reserve("b:1", 100_000, 2500.0)
    assert grant.joules == 2500.0
    Ledger(store).record(
        key="b:1",
        policy_name="b",
        cycle_id="b-c1",
        kind="train",
        tokens=100_000,
        joules=2500.0,
        method="estimated",
    )
    b.release("b:1")
    # a asks: it gets what is left, and b nothing more (the day holds 3000 J)
    share = budget.line("a").plan("a-c1", _obs(), budget._lines["a"][1], eval_j=100.0)
    assert share.observation.share_joules_left is not None
    assert share.observation.share_joules_left <= 500.0 - 100.0 + 1e-6
    assert b.reserve("b:2", 100_000, TRIAL_J).joules == 0
    events = [e for e in AuditLog(store).events(agent="energy") if e.action == "allocate"]
    assert len(events) == 1 and events[0].line == "a" and events[0].cycle_id == "a-c1"
    budget.line("a").release(eval_key("a-c1"))
