"""The factory's shared budgets at run time: reservations keep concurrent trials of several
lines within the limits; an idle line's share is lent and taken back; every plan audited."""

from __future__ import annotations

import threading

from adapters.store.audit import AuditLog
from adapters.store.db import Store
from adapters.store.ledger import Ledger
from agents.energy import EnergyObservation
from controller.budget import FactoryBudget, eval_key
from policies.factory import FactoryPolicy, LineSpec
from policies.loader import parse_policy
from policies.model import Policy

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
    for spec_line, name in zip(spec.lines, ("a", "b"), strict=True):
        budget.set_line(name, spec_line, _policy(name))
    return budget


def _policy(name: str) -> Policy:
    return parse_policy(
        f"name: {name}\nbudgets: {{tokens_per_trial: 100000}}\n"
        "energy: {prior_joules_per_token: 0.01}\ntuning: {trials_per_cycle: 3}"
    )


def _obs() -> EnergyObservation:
    return EnergyObservation(0, 0.0, None, "estimated")


def test_concurrent_reservations_never_exceed_the_factory_limit(store: Store) -> None:
    budget = _budget(store)
    a, b = budget.line("a"), budget.line("b")
    grants = [a.reserve("a:1", 100_000, TRIAL_J), b.reserve("b:1", 100_000, TRIAL_J)]
    grants.append(a.reserve("a:2", 100_000, TRIAL_J))
    assert sum(g.joules for g in grants) <= 3000 + 1e-6
    stopping = threading.Event()
    stopping.set()  # a line that is stopping does not wait for the others' trials
    refused = b.reserve("b:2", 100_000, TRIAL_J, stop=stopping)
    assert refused.joules == 0 and refused.action is not None
    assert refused.action.outcome == "refused"


def test_a_line_waits_for_what_the_others_trials_leave_unspent(store: Store) -> None:
    budget = _budget(store)
    a, b = budget.line("a"), budget.line("b")
    for key in ("a:1", "a:2", "a:3"):
        assert a.reserve(key, 100_000, TRIAL_J).joules == TRIAL_J  # the whole day, reserved
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(b.reserve("b:1", 100_000, TRIAL_J).joules))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not got  # nothing left: b waits while a's trials run
    Ledger(store).record(
        key="a:1",
        policy_name="a",
        cycle_id="a-c1",
        kind="train",
        tokens=100_000,
        joules=300.0,
        method="estimated",
    )  # a's first trial spent less than it reserved
    a.release("a:1")
    waiter.join(10)
    assert got and got[0] >= 0.25 * TRIAL_J  # b gets what a left unspent
    assert got[0] <= 3000 - 300 - 2 * TRIAL_J + 1e-6


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
    share = budget.line("a").plan("a-c1", _obs(), _policy("a"), eval_j=100.0)
    assert share.observation.share_joules_left is not None
    assert share.observation.share_joules_left <= 500.0 - 100.0 + 1e-6
    stopping = threading.Event()
    stopping.set()  # (a line training would make b wait for what a leaves: see below)
    assert b.reserve("b:2", 100_000, TRIAL_J, stop=stopping).joules == 0
    events = [e for e in AuditLog(store).events(agent="energy") if e.action == "allocate"]
    assert len(events) == 1 and events[0].line == "a" and events[0].cycle_id == "a-c1"
    budget.line("a").release(eval_key("a-c1"))


def test_a_trial_capped_high_reserves_what_the_share_holds(store: Store) -> None:
    """A trial may use up to the cycle's whole energy allowance, but is expected to need
    far less: it gets what the line's share holds, and no refusal is audited."""
    budget = _budget(store)
    grant = budget.line("a").reserve("a:1", 100_000, 9e6, expected_j=TRIAL_J)
    assert 0.25 * TRIAL_J <= grant.joules <= 3000 and grant.action is None


def test_a_line_waits_while_another_still_wants_trials_and_goes_when_it_is_done(
    store: Store,
) -> None:
    budget = _budget(store)
    a, b = budget.line("a"), budget.line("b")
    a.plan("a-c1", _obs(), _policy("a"), eval_j=0.0)  # a wants 3 trials: 3000 J by priority
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(b.reserve("b:1", 100_000, TRIAL_J).joules))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # a's trials come first, and may leave some over
    a.want(0)  # a is done: what it did not spend is b's
    waiter.join(10)
    assert got == [TRIAL_J]
    budget.line("a").release(eval_key("a-c1"))
