"""Data agent, on cost (decide): does this retraining pay for its energy?

Pure. The line's own history says what past retrainings bought: for each, the drift
figures that triggered it (the champion's loss increase on the new data, the byte
distribution's JS divergence), the energy it spent and the improvement its candidate
brought (none when it was refused or rolled back). A ridge fit of gain on the drift figures,
with the median energy, predicts this retraining's gain per kWh; refitting on resampled
history gives its uncertainty. A retraining predicted below the policy's threshold is
deferred, unless the champion is past the quality floor or older than the allowed
staleness. Too little history: retrain as the thresholds say, and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.actions import Action
from policies.model import Policy

_RIDGE = 1e-3


@dataclass(frozen=True)
class PastRetrain:
    js_divergence: float
    loss_increase_pct: float
    gain_pct: float  # the promoted candidate's improvement on recent data (0: none promoted)
    kwh: float


@dataclass(frozen=True)
class ValuePrediction:
    gain_pct: float
    kwh: float
    gain_pct_per_kwh: float
    low: float  # bounds of gain per kWh at the policy's confidence
    high: float
    history: int


def _features(js: float, loss_inc: float) -> list[float]:
    return [1.0, loss_inc, 100.0 * js]  # JS in hundredths: the same order as the loss %


def _fit(rows: Sequence[PastRetrain]) -> np.ndarray:
    x = np.array([_features(r.js_divergence, r.loss_increase_pct) for r in rows])
    y = np.array([r.gain_pct for r in rows])
    return np.linalg.solve(x.T @ x + _RIDGE * np.eye(x.shape[1]), x.T @ y)


def predict_value(
    history: Sequence[PastRetrain],
    js: float,
    loss_inc: float,
    *,
    confidence: float = 0.8,
    resamples: int = 500,
    seed: int = 0,
) -> ValuePrediction | None:
    """Gain per kWh of a retraining with these drift figures; None without history."""
    if not history:
        return None
    point = np.array(_features(js, loss_inc))
    kwh = float(np.median([r.kwh for r in history])) or 1e-9
    gain = max(0.0, float(point @ _fit(history)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        sample = [history[i] for i in rng.integers(0, len(history), len(history))]
        sample_kwh = float(np.median([r.kwh for r in sample])) or 1e-9
        draws.append(max(0.0, float(point @ _fit(sample))) / sample_kwh)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return ValuePrediction(gain, kwh, gain / kwh, float(low), float(high), len(history))


@dataclass(frozen=True)
class ValueObservation:
    prediction: ValuePrediction | None
    history: int
    champion_age_h: float
    champion_new_bpb: float | None
    energy_method: str = "estimated"  # how the history's energy was obtained


def decide_value(obs: ValueObservation, policy: Policy) -> Action:
    """Retrain (taken) or defer, with the prediction and its uncertainty."""
    rule = policy.triggers.value
    p = obs.prediction
    figures: dict[str, object] = {
        "history": obs.history,
        "min_history": rule.min_history,
        "threshold_gain_pct_per_kwh": rule.min_gain_pct_per_kwh,
        "champion_age_h": round(obs.champion_age_h, 2),
        "energy_method": obs.energy_method,
    }
    if p is not None:
        figures |= {
            "predicted_gain_pct": round(p.gain_pct, 4),
            "predicted_kwh": round(p.kwh, 6),
            "predicted_gain_pct_per_kwh": round(p.gain_pct_per_kwh, 3),
            "predicted_bounds": [round(p.low, 3), round(p.high, 3)],
            "confidence": rule.confidence,
        }
    if p is None or obs.history < rule.min_history:
        return _retrain(
            f"too little history ({obs.history} of {rule.min_history} past retrainings) to "
            "predict the gain: retrain as the drift thresholds say",
            figures,
        )
    said = (
        f"predicted gain {p.gain_pct:.2f}% for {1000 * p.kwh:.2f} Wh ({obs.energy_method}): "
        f"{p.gain_pct_per_kwh:.1f}%/kWh ({p.low:.1f}..{p.high:.1f})"
    )
    floor = policy.triggers.quality_floor_bpb
    if floor is not None and obs.champion_new_bpb is not None and obs.champion_new_bpb > floor:
        return _retrain(
            f"{said}; the champion is past the quality floor ({obs.champion_new_bpb:.3f} > "
            f"{floor:.3f} bits/byte): never deferred",
            figures,
        )
    stale = rule.max_staleness_h
    if stale is not None and obs.champion_age_h > stale:
        return _retrain(
            f"{said}; the champion is {obs.champion_age_h:.0f} h old (> {stale:g} h): never "
            "deferred",
            figures,
        )
    if rule.min_gain_pct_per_kwh is None:
        return _retrain(f"{said}; no threshold set: recorded, not applied", figures)
    if p.gain_pct_per_kwh < rule.min_gain_pct_per_kwh:
        return Action(
            "data",
            "retrain_value",
            "deferred",
            f"{said} < {rule.min_gain_pct_per_kwh:g}%/kWh: not worth its energy yet",
            figures,
        )
    return _retrain(f"{said} >= {rule.min_gain_pct_per_kwh:g}%/kWh", figures)


def _retrain(reason: str, figures: dict[str, object]) -> Action:
    return Action("data", "retrain_value", "taken", reason, figures)
