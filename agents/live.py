"""Data agent, production side (decide): has the champion's traffic drifted from what it
was trained and judged on?

Pure: the line's live watch hands over what serving saw of the champion (how many prompts,
their byte distribution's JS divergence from the champion's training data, the champion's
bits/byte on them) and its evaluation figure; this says whether that is live drift, and
what to do about it, with every figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.actions import Action
from policies.model import Policy

#: The trigger of a cycle the live watch asks for (the data node reads it).
LIVE_TRIGGER = "live drift"


@dataclass(frozen=True)
class LiveObservation:
    version: int
    prompts: int
    js_divergence: float | None
    live_bpb: float | None
    eval_bpb: float | None  # the champion on its own held-out text, cut like the prompts
    capture: bool  # served prompts are kept as data (something new to learn from)
    sample_bytes: int = 0

    @property
    def loss_increase_pct(self) -> float | None:
        if self.live_bpb is None or not self.eval_bpb:
            return None
        return 100.0 * (self.live_bpb - self.eval_bpb) / self.eval_bpb


def decide_live(obs: LiveObservation, policy: Policy) -> Action | None:
    """Live drift: an action (retrain, or why not); None when the champion is fine or the
    sample is too small to say."""
    live = policy.triggers.live
    if obs.prompts < live.min_prompts or obs.sample_bytes < live.min_bytes:
        return None
    inc = obs.loss_increase_pct
    figures: dict[str, object] = {
        "version": obs.version,
        "live_prompts": obs.prompts,
        "live_sample_bytes": obs.sample_bytes,
        "live_js_divergence": _r(obs.js_divergence),
        "js_threshold": live.js_divergence,
        "live_bpb": _r(obs.live_bpb),
        "eval_bpb": _r(obs.eval_bpb),
        "live_loss_increase_pct": _r(inc),
        "loss_threshold_pct": live.loss_increase_pct,
        "capture": obs.capture,
    }
    reasons = []
    if obs.js_divergence is not None and obs.js_divergence >= live.js_divergence:
        reasons.append(
            f"served prompts drift from the training data: JS={obs.js_divergence:.4f} >= "
            f"{live.js_divergence:.4f}"
        )
    if inc is not None and inc >= live.loss_increase_pct:
        reasons.append(
            f"the champion scores {obs.live_bpb:.3f} bits/byte on served prompts, {inc:.1f}% "
            f"over its {obs.eval_bpb:.3f} on its own held-out text cut the same way "
            f"(>= {live.loss_increase_pct:.1f}%)"
        )
    if not reasons:
        return None
    where = f"live drift on v{obs.version} ({obs.prompts} served prompts): " + "; ".join(reasons)
    if not obs.capture:
        return Action(
            "data",
            "live_drift",
            "deferred",
            where + "; nothing new to learn from: turn data.capture on to retrain on traffic",
            figures,
        )
    return Action("data", "live_drift", "taken", where + "; retrain on captured traffic", figures)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
