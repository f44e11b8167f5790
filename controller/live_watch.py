"""The champion watched in production: its served prompts against what it learned and how
it was judged (`agents.live.decide_live`), on the line's watch tick.

Every `triggers.live.every_s`, once the champion has answered `min_prompts`, the line
takes the server's uniform sample of those prompts, measures their byte distribution
against the champion's training data (JS divergence) and the champion's bits/byte on them
(an in-process evaluation, booked on the ledger as estimated or measured evaluation work),
publishes the figures on `/metrics`, and hands them to the data agent. Live drift is
audited, once per champion and outcome; with capture on, the prompts kept so far become a
data file at once and a cycle is asked for ("live drift"), so the retraining learns from
them: at most one such retraining per champion version (its byte distribution is judged
against the whole training data, which stays a mixture after a retraining on traffic; the
figures keep going to `/metrics`).

The sample is scored from a file in memory (/dev/shm where there is one): prompts a
client asked not to be stored are never in the sample, and nothing of it stays anywhere.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from adapters.energy import HostCpuEnergyMeter
from adapters.store.registry import ModelVersion
from adapters.traffic_source import find_traffic
from agents.actions import Action
from agents.drift import byte_histogram, js_divergence
from agents.live import LIVE_TRIGGER, LiveObservation, decide_live
from controller.context import LineContext


class LiveWatch:
    def __init__(self, ctx: LineContext, ask_cycle: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.ask_cycle = ask_cycle
        self._checked_at = time.monotonic()  # the first check waits a whole interval

    def check(self) -> Action | None:
        """Judge the champion's live sample when one is due; the audited action, if any."""
        ctx, live = self.ctx, self.ctx.policy.triggers.live
        traffic = ctx.traffic
        if not live.enabled or traffic is None:
            return None
        if time.monotonic() - self._checked_at < live.every_s:
            return None
        champion = ctx.champion()
        if champion is None or traffic.live_count(champion.version) < live.min_prompts:
            return None
        self._checked_at = time.monotonic()
        obs = self._observe(champion, traffic.take_live_sample(champion.version))
        traffic.publish_live(champion.version, _published(obs))
        action = decide_live(obs, ctx.policy)
        if action is None or ctx.audit.has_key(self._key(champion, "taken")):
            return None  # one retraining per champion on live drift (the figures go on)
        return self._act(action, champion)

    def _key(self, champion: ModelVersion, outcome: str) -> str:
        return f"{self.ctx.name}:live_drift:v{champion.version}:{outcome}"

    def _observe(self, champion: ModelVersion, prompts: list[str]) -> LiveObservation:
        ctx = self.ctx
        data = [p.encode("utf-8", "replace") for p in prompts]
        trained_on = ctx.catalog.get(champion.dataset_version)
        js = js_divergence(byte_histogram(data), trained_on.byte_hist) if trained_on else None
        evaluation = champion.evaluation or {}
        eval_bpb = evaluation.get("candidate_recent_bpb", champion.valid_bpb)
        return LiveObservation(
            version=champion.version,
            prompts=len(prompts),
            js_divergence=js,
            live_bpb=self._score(champion, b"\n".join(data)),
            eval_bpb=float(eval_bpb) if eval_bpb is not None else None,
            capture=ctx.policy.data.capture.enabled,
        )

    def _score(self, champion: ModelVersion, text: bytes) -> float | None:
        """The champion's bits/byte on the sample, booked as evaluation work."""
        ctx = self.ctx
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.NamedTemporaryFile(suffix=".txt", dir=folder, delete=False) as f:
            f.write(text)
        try:
            artefact = ctx.registry.verified_path(champion)
            with ctx.measuring:
                meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
                window = meter.begin()
                scored = ctx.evaluate(artefact, [f.name])
                reading = meter.end(window)
        except Exception as exc:  # a broken champion is the evaluator's business
            ctx.reporter.info(f"[data] live sample could not be scored: {exc}")
            return None
        finally:
            Path(f.name).unlink(missing_ok=True)
        ctx.ledger.record(
            key=f"{ctx.name}:live:v{champion.version}:{time.time():.0f}",
            policy_name=ctx.name,
            kind="eval",
            tokens=scored.tokens,
            joules=reading.joules,
            method=reading.method,
            model_version=champion.version,
        )
        return scored.bpb

    def _act(self, action: Action, champion: ModelVersion) -> Action:
        """Audit it; with capture on, gather what was kept and ask for a cycle."""
        ctx = self.ctx
        traffic = find_traffic(ctx.source)
        if action.outcome == "taken":
            gathered = traffic.gather(force=True) if traffic is not None else None
            if gathered is None:
                action = Action(
                    "data",
                    "live_drift",
                    "deferred",
                    action.reason.replace(
                        "; retrain on captured traffic", "; no captured traffic to learn from yet"
                    ),
                    action.figures,
                )
            else:
                action = action.with_figures(gathered=gathered.name)
        ctx.audit.append(
            agent=action.agent,
            action=action.action,
            outcome=action.outcome,
            reason=action.reason,
            figures=action.figures,
            policy_version=ctx.policy.version,
            key=self._key(champion, action.outcome),
        )
        ctx.reporter.info(f"[data] {action.reason}")
        if action.outcome == "taken":
            self.ask_cycle(LIVE_TRIGGER)
        return action


def _published(obs: LiveObservation) -> dict[str, float]:
    figures = {
        "prompts": float(obs.prompts),
        "js_divergence": obs.js_divergence,
        "bpb": obs.live_bpb,
        "loss_increase_pct": obs.loss_increase_pct,
    }
    return {k: float(v) for k, v in figures.items() if v is not None}
