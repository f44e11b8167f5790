"""When does retraining pay: the prediction from a line's own history, the rule that
defers, and the record of what each retraining bought beside what was predicted."""

from __future__ import annotations

from types import SimpleNamespace

from adapters.store.audit import AuditLog
from adapters.store.db import Store, utcnow_iso
from adapters.store.ledger import Ledger
from agents.data import DataObservation
from agents.retrain_value import (
    PastRetrain,
    ValueObservation,
    decide_value,
    predict_value,
)
from controller.retrain_value import judge_value, record_outcome
from policies.model import Policy

# gain follows the champion's loss on the new data: 0.5% of gain per % of loss, 0.001 kWh each
HISTORY = [PastRetrain(0.01, inc, 0.5 * inc, 0.001) for inc in (0.5, 1.0, 4.0, 8.0, 12.0)]
RULE = {"value": {"min_gain_pct_per_kwh": 1000.0, "min_history": 4}}


def _policy(**triggers: object) -> Policy:
    return Policy(name="m", triggers={**RULE, **triggers})


def test_the_prediction_follows_the_lines_history_with_its_uncertainty() -> None:
    small = predict_value(HISTORY, 0.01, 1.0)
    large = predict_value(HISTORY, 0.01, 10.0)
    assert small is not None and large is not None
    assert abs(small.gain_pct - 0.5) < 0.05 and abs(large.gain_pct - 5.0) < 0.1
    assert large.gain_pct_per_kwh > 4000 and small.gain_pct_per_kwh < 600
    assert small.low <= small.gain_pct_per_kwh <= small.high and small.history == 5
    assert predict_value([], 0.01, 1.0) is None


def test_a_retraining_predicted_not_to_pay_is_deferred_with_the_figures() -> None:
    p = predict_value(HISTORY, 0.01, 1.0)
    action = decide_value(ValueObservation(p, 5, 2.0, 2.0), _policy())
    assert action.outcome == "deferred" and "not worth its energy" in action.reason
    assert action.figures["predicted_gain_pct_per_kwh"] < 1000
    assert len(action.figures["predicted_bounds"]) == 2  # type: ignore[arg-type]
    worth = decide_value(
        ValueObservation(predict_value(HISTORY, 0.01, 10.0), 5, 2.0, 2.0), _policy()
    )
    assert worth.outcome == "taken"


def test_floor_staleness_no_threshold_and_little_history_always_retrain() -> None:
    p = predict_value(HISTORY, 0.01, 1.0)
    floor = decide_value(ValueObservation(p, 5, 2.0, 3.0), _policy(quality_floor_bpb=2.5))
    assert floor.outcome == "taken" and "quality floor" in floor.reason
    stale = decide_value(ValueObservation(p, 5, 500.0, 2.0), _policy())
    assert stale.outcome == "taken" and "500 h old" in stale.reason
    unset = decide_value(ValueObservation(p, 5, 2.0, 2.0), Policy(name="m"))
    assert unset.outcome == "taken" and "recorded, not applied" in unset.reason
    young = decide_value(
        ValueObservation(predict_value(HISTORY[:2], 0.01, 1.0), 2, 2.0, 2.0), _policy()
    )
    assert young.outcome == "taken" and "too little history (2 of 4" in young.reason


def _ctx(tmp_path, policy: Policy) -> SimpleNamespace:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    audit = AuditLog(store).for_line("m")

    def record(action, cid, key):  # type: ignore[no-untyped-def]
        audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=action.reason,
            figures=action.figures,
            cycle_id=cid,
            key=f"{cid}:{key}",
        )

    return SimpleNamespace(
        name="m", policy=policy, audit=audit, ledger=Ledger(store), record=record
    )


def _trained(ctx: SimpleNamespace, cid: str, gain: float, promoted: bool) -> None:
    """A cycle that trained (one estimated Wh), was blessed with this gain, maybe promoted."""
    ctx.audit.append(
        agent="evaluator",
        action="bless",
        outcome="taken",
        reason="",
        figures={"improvement_pct": gain},
        cycle_id=cid,
    )
    if promoted:
        ctx.audit.append(
            agent="deployer", action="promote", outcome="taken", reason="", cycle_id=cid
        )
    ctx.ledger.record(
        key=f"{cid}:t",
        policy_name="m",
        cycle_id=cid,
        kind="train",
        tokens=1,
        joules=3600.0,
        method="estimated",
    )


def test_each_retraining_records_its_gain_beside_the_prediction_and_feeds_the_next(
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(tmp_path, _policy())
    obs = DataObservation(2, 100, 0, "d", True, 0.01, 2.02, 2.0)  # loss +1%
    first = judge_value(ctx, obs, utcnow_iso())  # type: ignore[arg-type]
    assert first.outcome == "taken" and "too little history (0 of 4" in first.reason
    for i, inc in enumerate((0.5, 1.0, 4.0, 8.0)):  # four retrainings, each recorded
        cid = f"m-c{i:04d}"
        _trained(ctx, cid, 0.5 * inc, promoted=True)
        state = {
            "retrain": True,
            "drift": {"had_champion": True, "js_divergence": 0.01, "loss_increase_pct": inc},
            "value": dict(first.figures),
        }
        record_outcome(ctx, cid, state)  # type: ignore[arg-type]
        record_outcome(ctx, cid, state)  # type: ignore[arg-type]  # once per cycle
    outcomes = [e for e in ctx.audit.events(agent="data") if e.action == "retrain_outcome"]
    assert len(outcomes) == 4 and outcomes[-1].figures["gain_pct"] == 4.0
    assert outcomes[-1].figures["kwh"] == 0.001 and "(estimated)" in outcomes[-1].reason
    deferred = judge_value(ctx, obs, utcnow_iso())  # type: ignore[arg-type]
    assert deferred.outcome == "deferred" and deferred.figures["history"] == 4
    assert deferred.figures["energy_method"] == "estimated" and "Wh (estimated)" in deferred.reason
    # a later retraining shows its prediction beside what it bought
    cid = "m-c0009"
    _trained(ctx, cid, 1.0, promoted=False)
    record_outcome(
        ctx,
        cid,
        {
            "retrain": True,
            "drift": {"had_champion": True, "js_divergence": 0.01, "loss_increase_pct": 2.0},
            "value": dict(deferred.figures),
        },
    )  # type: ignore[arg-type]
    last = [e for e in ctx.audit.events(agent="data") if e.action == "retrain_outcome"][-1]
    assert last.figures["gain_pct"] == 0.0  # blessed but never promoted: bought nothing
    assert (
        last.figures["predicted_gain_pct_per_kwh"] == deferred.figures["predicted_gain_pct_per_kwh"]
    )
    assert "predicted" in last.reason and "actual 0.0%/kWh" in last.reason


def test_a_threshold_needs_a_staleness_limit_and_an_untrained_cycle_is_no_history(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    import pytest

    with pytest.raises(ValueError, match="max_staleness_h"):
        Policy(name="m", triggers={"value": {"min_gain_pct_per_kwh": 1.0, "max_staleness_h": None}})
    ctx = _ctx(tmp_path, _policy())
    state = {"retrain": True, "drift": {"had_champion": True, "js_divergence": 0.01}, "value": {}}
    record_outcome(ctx, "m-c0001", state)  # type: ignore[arg-type]  # held back: nothing trained
    assert not [e for e in ctx.audit.events(agent="data") if e.action == "retrain_outcome"]
