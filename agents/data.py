"""Data agent (decide side): does the new data call for retraining?

Pure: given what ingestion saw and how the champion fares on the new data, return the
actions with the figures they rest on. Two drift signals, either one can trigger:
byte-distribution Jensen-Shannon divergence against the champion's training data, and
the champion's bits per byte on the new data against its reference figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.actions import Action
from policies.model import Policy


@dataclass(frozen=True)
class DataObservation:
    new_files: int
    new_bytes: int
    quarantined: int
    dataset_version: str | None
    has_champion: bool
    js_divergence: float | None = None
    champion_new_bpb: float | None = None
    champion_ref_bpb: float | None = None
    live_drift: bool = False  # the cycle was asked for by the live watch (served prompts)

    @property
    def loss_increase_pct(self) -> float | None:
        if self.champion_new_bpb is None or not self.champion_ref_bpb:
            return None
        return 100.0 * (self.champion_new_bpb - self.champion_ref_bpb) / self.champion_ref_bpb


@dataclass(frozen=True)
class DataDecision:
    retrain: bool
    actions: tuple[Action, ...]


def decide_data(obs: DataObservation, policy: Policy) -> DataDecision:
    figures = _figures(obs, policy)
    if obs.dataset_version is None:
        return _decision(False, "no usable data ingested yet", figures)
    if not obs.has_champion:
        return _decision(True, "no champion yet: train an initial model", figures)
    if obs.new_files == 0:
        return _decision(False, "no new data since last cycle", figures)
    reasons = _drift_reasons(obs, policy)
    if reasons:
        return _decision(True, "; ".join(reasons), figures)
    if obs.live_drift:
        return _decision(
            True,
            "live drift on the champion's served prompts (see its live_drift event), "
            "and new data to learn from",
            figures,
        )
    if policy.triggers.retrain_on_new_data:
        return _decision(True, "new data and retrain_on_new_data is set", figures)
    return _decision(
        False, "new data ingested, but neither drift signal crossed its threshold", figures
    )


def _figures(obs: DataObservation, policy: Policy) -> dict[str, object]:
    drift = policy.triggers.drift
    return {
        "new_files": obs.new_files,
        "new_bytes": obs.new_bytes,
        "quarantined": obs.quarantined,
        "dataset_version": obs.dataset_version,
        "js_divergence": _r(obs.js_divergence),
        "js_threshold": drift.js_divergence,
        "champion_new_bpb": _r(obs.champion_new_bpb),
        "champion_ref_bpb": _r(obs.champion_ref_bpb),
        "loss_increase_pct": _r(obs.loss_increase_pct),
        "loss_threshold_pct": drift.loss_increase_pct,
    }


def _drift_reasons(obs: DataObservation, policy: Policy) -> list[str]:
    """Each drift signal over its threshold, said with its figures."""
    drift, reasons = policy.triggers.drift, []
    if obs.js_divergence is not None and obs.js_divergence >= drift.js_divergence:
        reasons.append(
            f"byte-distribution drift JS={obs.js_divergence:.4f} >= {drift.js_divergence:.4f}"
        )
    inc = obs.loss_increase_pct
    if inc is not None and inc >= drift.loss_increase_pct:
        reasons.append(
            f"champion loses {inc:.1f}% on new data "
            f"({obs.champion_new_bpb:.3f} vs {obs.champion_ref_bpb:.3f} bits/byte) "
            f">= {drift.loss_increase_pct:.1f}%"
        )
    return reasons


def _decision(retrain: bool, reason: str, figures: dict[str, object]) -> DataDecision:
    outcome = "taken" if retrain else "deferred"
    return DataDecision(retrain, (Action("data", "retrain", outcome, reason, figures),))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
