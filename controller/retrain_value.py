"""Wiring for `agents.retrain_value`: the line's history of retrainings, read from its own
audit log (one `data/retrain_outcome` event per retraining that had a champion to beat),
and that event, written when the cycle ends, with the prediction beside what happened."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.actions import Action
from agents.data import DataObservation
from agents.retrain_value import (
    PastRetrain,
    ValueObservation,
    decide_value,
    predict_value,
)
from controller.context import LineContext

OUTCOME = "retrain_outcome"


def _outcomes(ctx: LineContext) -> list[Any]:
    """This line's outcome events with metered energy (another line's, or none: left out)."""
    return [
        e
        for e in ctx.audit.events(agent="data")
        if e.action == OUTCOME and e.line in (None, ctx.name) and e.figures.get("kwh")
    ]


def history(ctx: LineContext) -> tuple[list[PastRetrain], str]:
    """Past retrainings, and how their energy was obtained (measured only if all were)."""
    events = _outcomes(ctx)
    methods = {e.figures.get("energy_method", "estimated") for e in events}
    out = []
    for e in events:
        f = e.figures
        out.append(
            PastRetrain(
                float(f.get("js_divergence") or 0.0),
                float(f.get("loss_increase_pct") or 0.0),
                float(f.get("gain_pct") or 0.0),
                float(f["kwh"]),
            )
        )
    return out, "measured" if methods == {"measured"} else "estimated"


def judge_value(ctx: LineContext, obs: DataObservation, champion_created_at: str) -> Action:
    """Whether a retraining the drift thresholds ask for pays, from the line's history."""
    past, method = history(ctx)
    rule = ctx.policy.triggers.value
    prediction = predict_value(
        past,
        obs.js_divergence or 0.0,
        obs.loss_increase_pct or 0.0,
        confidence=rule.confidence,
    )
    created = datetime.strptime(champion_created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    age_h = (datetime.now(UTC) - created).total_seconds() / 3600
    observed = ValueObservation(prediction, len(past), age_h, obs.champion_new_bpb, method)
    return decide_value(observed, ctx.policy)


def record_outcome(ctx: LineContext, cid: str, state: dict[str, Any]) -> None:
    """The retraining's actual gain and energy beside its prediction (once per cycle)."""
    drift = state.get("drift") or {}
    if not state.get("retrain") or not drift.get("had_champion"):
        return
    key = f"{cid}:data:{OUTCOME}"
    if ctx.audit.has_key(key):
        return
    if ctx.ledger.totals(ctx.name, cycle_id=cid, kind="train").joules <= 0:
        return  # the energy node held it back (window, budget): no retraining happened
    events = ctx.audit.events(cycle_id=cid)
    bless = next((e for e in events if e.agent == "evaluator" and e.action == "bless"), None)
    promoted = any(
        e.agent == "deployer" and e.action == "promote" and e.outcome == "taken" for e in events
    )
    gain = float(bless.figures.get("improvement_pct") or 0.0) if bless and promoted else 0.0
    kwh = ctx.ledger.totals(ctx.name, cycle_id=cid).joules / 3.6e6
    predicted = state.get("value") or {}
    figures = {
        "js_divergence": drift.get("js_divergence"),
        "loss_increase_pct": drift.get("loss_increase_pct"),
        "gain_pct": round(max(0.0, gain), 4),
        "kwh": round(kwh, 8),
        "gain_pct_per_kwh": round(max(0.0, gain) / kwh, 3) if kwh > 0 else None,
        "energy_method": "estimated" if "estimated" in _methods(ctx, cid) else "measured",
        "predicted_gain_pct": predicted.get("predicted_gain_pct"),
        "predicted_gain_pct_per_kwh": predicted.get("predicted_gain_pct_per_kwh"),
        "predicted_bounds": predicted.get("predicted_bounds"),
    }
    said = (
        f"retraining gained {figures['gain_pct']:.2f}% for {1000 * kwh:.2f} Wh"
        + (" (estimated)" if "estimated" in _methods(ctx, cid) else "")
        + (
            f"; predicted {predicted['predicted_gain_pct_per_kwh']:.1f}%/kWh, actual "
            f"{figures['gain_pct_per_kwh']:.1f}%/kWh"
            if predicted.get("predicted_gain_pct_per_kwh") is not None
            and figures["gain_pct_per_kwh"] is not None
            else "; no prediction yet"
        )
    )
    ctx.record(Action("data", OUTCOME, "taken", said, figures), cid, f"data:{OUTCOME}")


def _methods(ctx: LineContext, cid: str) -> set[str]:
    totals = ctx.ledger.totals(ctx.name, cycle_id=cid)
    out = set()
    if totals.estimated_joules:
        out.add("estimated")
    if totals.measured_joules:
        out.add("measured")
    return out
