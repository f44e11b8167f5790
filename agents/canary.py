"""Canary agent (decide side): judge one rollout step on live traffic, then say what's next.

Pure: the rollout node collects what each version saw during the step (requests, failures,
latencies), the two models' bits/byte on the same sampled live prompts and clients'
ratings of each one's answers; these
functions compare challenger with champion under the policy's limits and return an action
with every figure it used. Three outcomes, as in progressive-delivery tools: *pass* (every
check has enough evidence and clears its limit), *fail* (a limit is crossed: roll back) and
*inconclusive* (too little evidence to say either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from agents.actions import Action
from agents.stats import bootstrap_diff_bounds, bootstrap_mean_bounds, percentile
from policies.model import RolloutPolicy

StepOutcome = Literal["pass", "fail", "inconclusive"]
NextMove = Literal["advance", "promote", "rollback", "pause", "extend"]


@dataclass(frozen=True)
class LiveFigures:
    """What one model version saw from live traffic during a window."""

    requests: int = 0
    failures: int = 0
    latencies_ms: tuple[float, ...] = ()

    @property
    def error_rate_pct(self) -> float:
        return 100.0 * self.failures / self.requests if self.requests else 0.0

    def merged(self, other: LiveFigures) -> LiveFigures:
        return LiveFigures(
            self.requests + other.requests,
            self.failures + other.failures,
            self.latencies_ms + other.latencies_ms,
        )


@dataclass(frozen=True)
class StepVerdict:
    outcome: StepOutcome
    action: Action


@dataclass
class _Evidence:
    """What the checks of one step found: limits crossed, checks short of evidence, and
    every figure they used."""

    figures: dict[str, object]
    failed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def judge_step(
    *,
    step: int,
    weight_pct: float,
    champion: LiveFigures,
    challenger: LiveFigures,
    champion_so_far: LiveFigures,
    paired_loss: list[tuple[float, float]],
    policy: RolloutPolicy,
    seed: int = 0,
    ratings: tuple[Sequence[float], Sequence[float]] = ((), ()),
) -> StepVerdict:
    """Compare the challenger's step with the champion's.

    `champion_so_far` is the champion's traffic over the whole rollout, used for latency
    and error rate when its own share of this step is too small (at 100% it has none).
    `paired_loss` holds (champion, challenger) bits/byte on the same sampled prompts;
    `ratings` the clients' ratings (0..1) of (champion, challenger) answers since the
    rollout began.
    """
    ref = champion if champion.requests >= policy.min_requests else champion_so_far
    ev = _Evidence(
        {
            "step": step,
            "weight_pct": weight_pct,
            "challenger_requests": challenger.requests,
            "challenger_failures": challenger.failures,
            "champion_requests": champion.requests,
            "champion_failures": champion.failures,
            "champion_reference": "this step" if ref is champion else "rollout so far",
        }
    )
    _check_errors(ev, challenger, ref, policy)
    _check_latency(ev, challenger, ref, policy)
    if policy.loss_sample_rate > 0:
        _check_online_loss(ev, paired_loss, policy, seed)
    _check_feedback(ev, ratings, policy, seed)
    return _verdict(ev, step, weight_pct, challenger)


def _check_errors(
    ev: _Evidence, challenger: LiveFigures, ref: LiveFigures, policy: RolloutPolicy
) -> None:
    """The failure limit holds even before there is enough traffic to judge the rest."""
    err = challenger.error_rate_pct
    ev.figures["challenger_error_rate_pct"] = round(err, 3)
    allowed_failures = (
        policy.max_error_rate_pct / 100.0 * max(challenger.requests, policy.min_requests)
    )
    if challenger.failures > allowed_failures:
        ev.failed.append(
            f"error rate {err:.2f}% ({challenger.failures}/{challenger.requests}) > limit "
            f"{policy.max_error_rate_pct:.2f}%"
        )
    if challenger.requests < policy.min_requests:
        ev.unknown.append(
            f"{challenger.requests} challenger requests < {policy.min_requests} needed"
        )
    elif ref.requests >= policy.min_requests:
        champ_err = ref.error_rate_pct
        ev.figures["champion_error_rate_pct"] = round(champ_err, 3)
        if err - champ_err > policy.max_error_rate_increase_pct and not ev.failed:
            ev.failed.append(
                f"error rate {err:.2f}% exceeds the champion's {champ_err:.2f}% by more than "
                f"{policy.max_error_rate_increase_pct:.2f} points"
            )


def _check_latency(
    ev: _Evidence, challenger: LiveFigures, ref: LiveFigures, policy: RolloutPolicy
) -> None:
    """Tail latency: p99, or the highest quantile the challenger's sample supports (with 20
    requests its "p99" would be its maximum), taken at the same quantile for both."""
    n = len(challenger.latencies_ms)
    q = 99.0 if n >= 100 else max(50.0, 100.0 * (1.0 - 1.0 / max(n, 1)))
    tail = percentile(challenger.latencies_ms, q)
    p99 = percentile(challenger.latencies_ms, 99)
    ref_tail = percentile(ref.latencies_ms, q)
    ev.figures |= {
        "latency_quantile": round(q, 2),
        "challenger_p50_ms": _r(percentile(challenger.latencies_ms, 50)),
        "challenger_p99_ms": _r(p99),
        "challenger_tail_ms": _r(tail),
        "champion_p50_ms": _r(percentile(ref.latencies_ms, 50)),
        "champion_p99_ms": _r(percentile(ref.latencies_ms, 99)),
        "champion_tail_ms": _r(ref_tail),
    }
    if (
        p99 is not None
        and policy.max_latency_p99_ms is not None
        and p99 > policy.max_latency_p99_ms
    ):
        ev.failed.append(f"p99 latency {p99:.0f} ms > limit {policy.max_latency_p99_ms:.0f} ms")
    if challenger.requests < policy.min_requests or tail is None:
        return
    if ref.requests >= policy.min_requests and ref_tail:
        rise = 100.0 * (tail - ref_tail) / ref_tail
        ev.figures["latency_p99_change_pct"] = round(rise, 2)
        if rise > policy.max_latency_p99_increase_pct:
            ev.failed.append(
                f"p{q:g} latency {tail:.0f} ms is {rise:+.0f}% against the champion's "
                f"{ref_tail:.0f} ms (limit +{policy.max_latency_p99_increase_pct:.0f}%)"
            )
    else:
        ev.unknown.append("no champion traffic to compare latency with")


def _check_online_loss(
    ev: _Evidence, paired_loss: list[tuple[float, float]], policy: RolloutPolicy, seed: int
) -> None:
    """Bits/byte of both models on the same sampled live prompts."""
    n = len(paired_loss)
    ev.figures["loss_samples"] = n
    if n < policy.min_loss_samples:
        ev.unknown.append(f"{n} sampled prompts scored < {policy.min_loss_samples} needed")
        return
    base = sum(c for c, _ in paired_loss) / n
    change = [100.0 * (ch - c) / base for c, ch in paired_loss]
    if not all(math.isfinite(x) for x in change):
        ev.failed.append("the challenger could not score some live prompts (infinite loss)")
        change = [x for x in change if math.isfinite(x)] or [0.0]
    mean = sum(change) / n
    lo, hi = bootstrap_mean_bounds(change, confidence=policy.confidence, resamples=2000, seed=seed)
    limit = policy.max_online_loss_increase_pct
    ev.figures |= {
        "champion_online_bpb": round(base, 5),
        "challenger_online_bpb": round(sum(ch for _, ch in paired_loss) / n, 5),
        "online_loss_change_pct": round(mean, 3),
        "online_loss_change_bounds_pct": [round(lo, 3), round(hi, 3)],
        "confidence": policy.confidence,
    }
    if lo > limit:
        ev.failed.append(
            f"online loss {mean:+.2f}% on {n} live prompts (bounds {lo:+.2f}%..{hi:+.2f}%) "
            f"> limit +{limit:.2f}%"
        )
    elif hi > limit:
        ev.unknown.append(
            f"online loss {mean:+.2f}% on {n} live prompts: bounds {lo:+.2f}%..{hi:+.2f}% "
            f"straddle the limit +{limit:.2f}%"
        )
    else:
        ev.figures["online_loss_ok"] = True


def _check_feedback(
    ev: _Evidence,
    ratings: tuple[Sequence[float], Sequence[float]],
    policy: RolloutPolicy,
    seed: int,
) -> None:
    """Clients' ratings: a challenger confidently rated worse than the champion by more than
    the allowed drop fails. Ratings are optional evidence: too few of them, or bounds that
    straddle the limit, say so in the figures but never hold a step up.

    The ratings accumulate over the rollout and are looked at after every step, so each
    look gets an equal share of the error the policy allows (Bonferroni over the steps and
    extensions). Each side gets one 0 and one 1 rating more (a uniform prior), so a small
    sample of identical ratings does not look certain."""
    champ, chall = ratings
    ev.figures |= {"champion_ratings": len(champ), "challenger_ratings": len(chall)}
    if min(len(champ), len(chall)) < policy.min_feedback:
        ev.figures["feedback"] = f"not judged: fewer than {policy.min_feedback} ratings each"
        return
    looks = len(policy.steps) + policy.max_extensions
    confidence = 1.0 - (1.0 - policy.confidence) / looks
    lo, hi = bootstrap_diff_bounds(
        [*champ, 0.0, 1.0], [*chall, 0.0, 1.0], confidence=confidence, resamples=4000, seed=seed
    )
    champ_mean, chall_mean = sum(champ) / len(champ), sum(chall) / len(chall)
    ev.figures |= {
        "champion_rating": round(champ_mean, 4),
        "challenger_rating": round(chall_mean, 4),
        "rating_drop": round(champ_mean - chall_mean, 4),
        "rating_drop_bounds": [round(lo, 4), round(hi, 4)],
        "rating_confidence": round(confidence, 5),
    }
    if lo > policy.max_feedback_drop:
        ev.failed.append(
            f"clients rate it worse: mean rating {chall_mean:.2f} against the champion's "
            f"{champ_mean:.2f} ({len(chall)} and {len(champ)} ratings; drop bounds "
            f"{lo:.2f}..{hi:.2f} > allowed {policy.max_feedback_drop:.2f})"
        )


def _verdict(ev: _Evidence, step: int, weight_pct: float, challenger: LiveFigures) -> StepVerdict:
    where = f"step {step + 1} ({weight_pct:g}% of traffic)"
    figures = ev.figures
    if ev.failed:
        reason = f"{where}: " + "; ".join(ev.failed)
        return StepVerdict("fail", Action("deployer", "canary_step", "refused", reason, figures))
    if ev.unknown:
        reason = f"{where} inconclusive: " + "; ".join(ev.unknown)
        return StepVerdict(
            "inconclusive", Action("deployer", "canary_step", "deferred", reason, figures)
        )
    summary = f"{challenger.requests} requests, {challenger.error_rate_pct:.2f}% errors"
    if "latency_p99_change_pct" in figures:
        summary += f", p99 {figures['latency_p99_change_pct']:+.0f}% vs champion"
    if "online_loss_change_pct" in figures:
        summary += f", online loss {figures['online_loss_change_pct']:+.2f}%"
    if "rating_drop" in figures:
        summary += (
            f", rating {figures['challenger_rating']:.2f} vs {figures['champion_rating']:.2f}"
        )
    return StepVerdict(
        "pass", Action("deployer", "canary_step", "taken", f"{where} passed: {summary}", figures)
    )


def next_move(
    outcome: StepOutcome, *, step: int, n_steps: int, extensions: int, policy: RolloutPolicy
) -> NextMove:
    """What follows a judged step: the last passing step promotes; a failure rolls back;
    an inconclusive step follows the policy (extend falls back to pause when used up)."""
    if outcome == "fail":
        return "rollback"
    if outcome == "pass":
        return "promote" if step + 1 >= n_steps else "advance"
    rule = policy.on_inconclusive
    if rule == "extend":
        return "extend" if extensions < policy.max_extensions else "pause"
    if rule == "proceed":
        return "promote" if step + 1 >= n_steps else "advance"
    return rule


def _r(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None
