"""Evaluator agent (decide side): bless or refuse a candidate against the champion.

Pure: both models are scored by the evaluator node on the same held-out data (recent:
the newest data; reference: the data before it); this function applies the policy's
gates and says which passed, with the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agents.actions import Action
from agents.stats import bootstrap_mean_bounds
from policies.model import GatePolicy, MetricGate, Policy


@dataclass(frozen=True)
class Scores:
    recent_bpb: float
    reference_bpb: float
    recent_chunks: tuple[float, ...] = ()  # per-chunk-group bits/byte, for the paired bootstrap
    latency_ms_per_token: float | None = None  # measured in the serving runtime
    tokens_per_joule: float | None = None  # generation; its method is `energy_method`
    energy_method: str | None = None  # "measured" or "estimated"
    feedback_bpb: float | None = None  # on clients' corrections; None while there are none

    @property
    def finite(self) -> bool:
        return math.isfinite(self.recent_bpb) and math.isfinite(self.reference_bpb)

    def metric(self, name: str) -> float | None:
        value = getattr(self, name, None)
        return float(value) if value is not None else None


#: Metrics that exist only once clients gave something to measure: skipped, said so, until then.
WAITS_FOR_CLIENTS = {"feedback_bpb": "skipped: too few corrections from clients yet"}


def check_metric_gates(
    candidate: Scores, champion: Scores | None, gates: dict[str, MetricGate]
) -> tuple[list[str], dict[str, object]]:
    """Each declared bound on each metric: (failures, figures). A metric the candidate lacks
    fails its gate (a gate that cannot be checked must not pass silently), except one that
    waits for clients' data; change bounds are skipped without a champion value and say so."""
    failures: list[str] = []
    figures: dict[str, object] = {}
    for name, gate in sorted(gates.items()):
        value = candidate.metric(name)
        if value is None and name in WAITS_FOR_CLIENTS:
            figures[name] = WAITS_FOR_CLIENTS[name]
            continue
        if value is None or not math.isfinite(value):
            failures.append(f"{name}: candidate has no measured value")
            continue
        base = champion.metric(name) if champion is not None else None
        if name in WAITS_FOR_CLIENTS and base is not None and not math.isfinite(base):
            failures.append(f"{name}: the champion could not be measured to compare with")
            continue
        label = name
        if name == "tokens_per_joule" and candidate.energy_method:
            label = f"{name} ({candidate.energy_method})"
        figures[f"candidate_{name}"] = round(value, 6)
        if gate.max is not None and value > gate.max:
            failures.append(f"{label} {value:.4g} > max {gate.max:.4g}")
        if gate.min is not None and value < gate.min:
            failures.append(f"{label} {value:.4g} < min {gate.min:.4g}")
        base = champion.metric(name) if champion is not None else None
        changes = (
            gate.max_increase,
            gate.max_increase_pct,
            gate.max_decrease,
            gate.max_decrease_pct,
        )
        if all(c is None for c in changes):
            continue
        if base is None or not math.isfinite(base) or base == 0:
            figures[f"{name}_change"] = "skipped: no champion value"
            continue
        delta = value - base
        pct = 100.0 * delta / abs(base)
        figures |= {f"champion_{name}": round(base, 6), f"{name}_change_pct": round(pct, 3)}
        if gate.max_increase is not None and delta > gate.max_increase:
            failures.append(f"{label} rises by {delta:.4g} > allowed {gate.max_increase:.4g}")
        if gate.max_increase_pct is not None and pct > gate.max_increase_pct:
            failures.append(f"{label} {pct:+.2f}% > allowed +{gate.max_increase_pct:.2f}%")
        if gate.max_decrease is not None and -delta > gate.max_decrease:
            failures.append(f"{label} falls by {-delta:.4g} > allowed {gate.max_decrease:.4g}")
        if gate.max_decrease_pct is not None and -pct > gate.max_decrease_pct:
            failures.append(f"{label} {pct:+.2f}% > allowed -{gate.max_decrease_pct:.2f}%")
    return failures, figures


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    action: Action


def paired_bootstrap(
    champion: tuple[float, ...],
    candidate: tuple[float, ...],
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float] | None:
    """(lower confidence bound, mean) of the candidate's improvement, in % of the champion's
    bits/byte, resampling the same evaluation chunks for both models. None when the chunks
    do not pair up (different chunking) or are too few."""
    n = len(champion)
    if n < 4 or len(candidate) != n:
        return None
    champ = np.asarray(champion, dtype=float)
    gain = champ - np.asarray(candidate, dtype=float)
    if not np.all(np.isfinite(gain)):
        return None
    base = float(champ.mean())
    lower, _upper = bootstrap_mean_bounds(
        gain.tolist(), confidence=confidence, resamples=resamples, seed=seed
    )
    return 100.0 * lower / base, 100.0 * float(gain.mean()) / base


@dataclass(frozen=True)
class EvalObservation:
    """Both models scored on the same held-out data, and what went wrong on the way.

    `champion_problem` says why an existing champion could not be scored (corrupt artefact,
    NaN scores); `serving_problem` why the candidate failed the load-and-query check."""

    candidate: Scores | None
    champion: Scores | None = None
    champion_problem: str | None = None
    serving_problem: str | None = None


def judge(obs: EvalObservation, policy: Policy) -> Verdict:
    """Every gate, then the serving check: a candidate that cannot answer as serving loads
    it is refused whatever its scores. With a broken champion the candidate is judged on
    the absolute ceiling alone, and the reason says so: a broken champion is itself a
    reason to replace it, but never silently."""
    verdict = _judge_scores(obs.candidate, obs.champion, policy, obs.champion_problem)
    if verdict.blessed and obs.serving_problem:
        action = replace(
            verdict.action,
            outcome="refused",
            reason=f"candidate failed the load-and-query check: {obs.serving_problem}",
        )
        return Verdict(False, action)
    return verdict


def _judge_scores(
    candidate: Scores | None,
    champion: Scores | None,
    policy: Policy,
    champion_problem: str | None,
) -> Verdict:
    g = policy.gates
    figures: dict[str, object] = {
        "gate_max_bpb": g.max_bpb,
        "gate_min_improvement_pct": g.min_improvement_pct,
        "gate_max_reference_regression_pct": g.max_reference_regression_pct,
    }
    if candidate is None:
        return _refuse("candidate could not be scored", figures)
    figures |= {
        "candidate_recent_bpb": round(candidate.recent_bpb, 6),
        "candidate_reference_bpb": round(candidate.reference_bpb, 6),
    }
    if not candidate.finite:
        return _refuse("candidate scores are not finite (NaN/inf): never promoted", figures)
    failures = []
    if candidate.recent_bpb > g.max_bpb:
        failures.append(f"recent {candidate.recent_bpb:.4f} bits/byte > ceiling {g.max_bpb:.4f}")
    if champion_problem is not None:
        figures["champion_problem"] = champion_problem
        champion = None
    if champion is not None:
        failures += _against_champion(candidate, champion, g, figures)
    metric_failures, metric_figures = check_metric_gates(candidate, champion, dict(g.metrics))
    failures += metric_failures
    figures |= metric_figures
    for who, scores in (("candidate", candidate), ("champion", champion)):
        for name in ("latency_ms_per_token", "tokens_per_joule", "feedback_bpb"):  # on record
            value = scores.metric(name) if scores is not None else None
            if value is not None:
                figures.setdefault(f"{who}_{name}", round(value, 6))
    if failures:
        return _refuse("; ".join(failures), figures)
    reason = _blessed(candidate, champion, champion_problem, g, figures)
    return Verdict(True, Action("evaluator", "bless", "taken", reason, figures))


def _against_champion(
    candidate: Scores, champion: Scores, g: GatePolicy, figures: dict[str, object]
) -> list[str]:
    """The gates that compare with the champion: improvement on recent data (mean and
    paired bootstrap) and regression on reference data. Adds their figures."""
    failures: list[str] = []
    gain = 100.0 * (champion.recent_bpb - candidate.recent_bpb) / champion.recent_bpb
    regression = 100.0 * (candidate.reference_bpb - champion.reference_bpb) / champion.reference_bpb
    figures |= {
        "champion_recent_bpb": round(champion.recent_bpb, 6),
        "champion_reference_bpb": round(champion.reference_bpb, 6),
        "improvement_pct": round(gain, 4),
        "reference_regression_pct": round(regression, 4),
    }
    if gain < g.min_improvement_pct:
        failures.append(
            f"improvement on recent data {gain:.2f}% < required {g.min_improvement_pct:.2f}%"
        )
    elif g.bootstrap.enabled:
        boot = paired_bootstrap(
            champion.recent_chunks,
            candidate.recent_chunks,
            confidence=g.bootstrap.confidence,
            resamples=g.bootstrap.resamples,
            seed=g.bootstrap.seed,
        )
        if boot is None:
            figures["bootstrap"] = "skipped: evaluation chunks do not pair up"
        else:
            lower, _mean = boot
            figures["improvement_lower_bound_pct"] = round(lower, 4)
            figures["bootstrap_confidence"] = g.bootstrap.confidence
            if lower < g.min_improvement_pct:
                failures.append(
                    f"the {g.bootstrap.confidence:.0%} lower bound of the improvement "
                    f"({lower:.2f}%, paired bootstrap over {len(candidate.recent_chunks)} "
                    f"chunk groups) < required {g.min_improvement_pct:.2f}%"
                )
    if regression > g.max_reference_regression_pct:
        failures.append(
            f"reference data regresses {regression:.2f}% > allowed "
            f"{g.max_reference_regression_pct:.2f}%"
        )
    return failures


def _blessed(
    candidate: Scores,
    champion: Scores | None,
    champion_problem: str | None,
    g: GatePolicy,
    figures: dict[str, object],
) -> str:
    """Why a candidate that passed every gate is blessed, in one sentence."""
    if champion_problem is not None:
        reason = (
            f"champion could not be scored ({champion_problem}); judged on the ceiling alone: "
            f"recent {candidate.recent_bpb:.4f} bits/byte <= {g.max_bpb:.4f}"
        )
    elif champion is None:
        reason = f"first model: recent {candidate.recent_bpb:.4f} bits/byte within ceiling"
    else:
        reason = (
            f"beats champion on recent data by {figures['improvement_pct']:.2f}% "
            f"({candidate.recent_bpb:.4f} vs {champion.recent_bpb:.4f} bits/byte"
            + (
                f"; {figures['bootstrap_confidence']:.0%} lower bound "
                f"{figures['improvement_lower_bound_pct']:.2f}%"
                if "improvement_lower_bound_pct" in figures
                else ""
            )
            + f"), reference change {figures['reference_regression_pct']:+.2f}%"
        )
    return reason


def _refuse(reason: str, figures: dict[str, object]) -> Verdict:
    return Verdict(False, Action("evaluator", "bless", "refused", reason, figures))
