"""The champion watched in production: its served prompts against what it learned and how
it was judged (`agents.live.decide_live`).

Every `triggers.live.every_s`, once the champion has answered `min_prompts`, the tick asks
the line's own thread for a check (scoring must not hold up the factory's tick). The check
takes the server's uniform sample of those prompts (redacted with the line's capture
patterns), measures their byte distribution against the champion's training data (JS
divergence) and the champion's bits/byte on them against its bits/byte on its own held-out
text cut into pieces of the same lengths (short prompts score worse than long text with no
drift at all), publishes the figures on `/metrics`, and hands them to the data agent. Live
drift is audited, once per champion and outcome; with capture on, the prompts kept so far
become a data file at once and a cycle is asked for ("live drift"): at most one such
retraining per champion version (its byte distribution is judged against the whole
training data, which stays a mixture after a retraining on traffic; the figures keep going
to `/metrics`).

The sample is scored from memory (/dev/shm); where there is none, its bits/byte are not
measured rather than written to disk. Prompts a client asked not to be stored are never in
the sample.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from adapters.energy import HostCpuEnergyMeter
from adapters.store.registry import ModelVersion
from adapters.traffic_capture import CaptureSpec
from adapters.traffic_source import LABEL
from agents.actions import Action
from agents.drift import byte_histogram, js_divergence
from agents.live import LIVE_TRIGGER, LiveObservation, decide_live
from controller.context import LineContext

MEMORY = "/dev/shm"
PREFIX = "aifactory-live-"


class LiveWatch:
    def __init__(self, ctx: LineContext, ask_cycle: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.ask_cycle = ask_cycle
        self._checked_at = time.monotonic()  # the first check waits a whole interval
        _sweep_memory()

    def due(self) -> bool:
        """Cheap (the tick asks): is a check due, with enough served prompts?"""
        ctx, live = self.ctx, self.ctx.policy.triggers.live
        if not live.enabled or ctx.traffic is None:
            return False
        if time.monotonic() - self._checked_at < live.every_s:
            return False
        served = ctx.traffic.current  # what serving holds: no query on the tick
        return served is not None and ctx.traffic.live_count(served.version) >= live.min_prompts

    def check(self) -> Action | None:
        """Judge the champion's live sample (on the line's thread); the audited action."""
        ctx, traffic = self.ctx, self.ctx.traffic
        champion = ctx.champion()
        if traffic is None or champion is None:
            return None
        self._checked_at = time.monotonic()
        traffic.keep_live_only(champion.version)  # retired versions' samples go
        prompts = [_scrub(ctx, p) for p in traffic.take_live_sample(champion.version)]
        prompts = [p for p in prompts if p]
        if (
            sum(len(p.encode("utf-8", "replace")) for p in prompts)
            < ctx.policy.triggers.live.min_bytes
        ):
            return None  # too little to judge: nothing scored, nothing booked
        obs = self._observe(champion, prompts)
        traffic.publish_live(champion.version, _published(obs))
        action = decide_live(obs, ctx.policy)
        if action is None or ctx.audit.has_key(self._key(champion, "taken")):
            return None
        return self._act(action, champion)

    def _key(self, champion: ModelVersion, outcome: str) -> str:
        return f"{self.ctx.name}:live_drift:v{champion.version}:{outcome}"

    def _observe(self, champion: ModelVersion, prompts: list[str]) -> LiveObservation:
        ctx = self.ctx
        data = [p.encode("utf-8", "replace") for p in prompts]
        trained_on = ctx.catalog.get(champion.dataset_version)
        js = js_divergence(byte_histogram(data), trained_on.byte_hist) if trained_on else None
        reference = self._reference(trained_on, [len(d) for d in data])
        return LiveObservation(
            version=champion.version,
            prompts=len(prompts),
            js_divergence=js,
            live_bpb=self._score(champion, b"\n".join(data), "live"),
            eval_bpb=self._score(champion, reference, "reference") if reference else None,
            capture=ctx.policy.data.capture.enabled,
            sample_bytes=sum(len(d) for d in data),
        )

    def _reference(self, trained_on: object, lengths: list[int]) -> bytes:
        """The champion's own held-out text (as much as the pieces need), cut into pieces
        as long as the prompts; empty when it cannot be read."""
        hashes = getattr(trained_on, "file_hashes", ())
        wanted, parts = sum(lengths), []
        try:
            for path in self.ctx.holdouts(hashes):
                parts.append(Path(path).read_bytes()[: wanted - sum(map(len, parts))])
                if sum(map(len, parts)) >= wanted:
                    break
        except Exception as exc:
            self.ctx.reporter.info(f"[data] live reference unreadable: {exc}")
            return b""
        text = b"".join(parts)
        pieces, at = [], 0
        for n in lengths:
            if at + n > len(text):
                at = 0
            pieces.append(text[at : at + n])
            at += n
        return b"\n".join(pieces) if text else b""

    def _score(self, champion: ModelVersion, text: bytes, what: str) -> float | None:
        """The champion's bits/byte on text held in memory, booked as evaluation work."""
        ctx = self.ctx
        if not os.path.isdir(MEMORY):
            return None  # never onto a disk
        try:
            artefact = ctx.registry.verified_path(champion)
            with tempfile.NamedTemporaryFile(prefix=PREFIX, suffix=".txt", dir=MEMORY) as f:
                f.write(text)
                f.flush()
                with ctx.measuring:
                    meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
                    window = meter.begin()
                    scored = ctx.evaluate(artefact, [f.name])
                    reading = meter.end(window)
            ctx.booked_cpu.add(reading.cpu_seconds)  # work booked below, not the controller's
        except Exception as exc:  # a broken champion is the evaluator's business
            ctx.reporter.info(f"[data] live {what} could not be scored: {exc}")
            return None
        ctx.ledger.record(
            key=f"{ctx.name}:live-{what}:v{champion.version}:{time.time():.3f}",
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
        if action.outcome == "taken":
            traffic = ctx.kept_traffic if ctx.policy.data.capture.enabled else None
            gathered = traffic.gather(force=True) if traffic is not None else None
            untrained = self._untrained_traffic(champion)
            if gathered is None and not untrained:
                action = Action(
                    "data",
                    "live_drift",
                    "deferred",
                    action.reason.replace(
                        "; retrain on captured traffic", "; no captured traffic to learn from yet"
                    ),
                    action.figures,
                )
            elif gathered is not None:
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

    def _untrained_traffic(self, champion: ModelVersion) -> bool:
        """Kept traffic already ingested that the champion was not trained on."""
        ctx = self.ctx
        trained = ctx.catalog.get(champion.dataset_version)
        seen = set(trained.file_hashes) if trained else set()
        files = ctx.catalog.with_status(ctx.name, "ingested")
        return any(f.label == LABEL and f.sha256 not in seen for f in files)


def _scrub(ctx: LineContext, prompt: str) -> str:
    patterns = tuple(ctx.policy.data.capture.redact)
    return CaptureSpec(redact=patterns).scrub(prompt) if patterns else prompt


def _sweep_memory() -> None:
    """Samples left in memory by a daemon killed while scoring (older than an hour)."""
    if not os.path.isdir(MEMORY):
        return
    for path in Path(MEMORY).glob(f"{PREFIX}*"):
        try:
            if time.time() - path.stat().st_mtime > 3600:
                path.unlink()
        except OSError:
            pass


def _published(obs: LiveObservation) -> dict[str, float]:
    figures = {
        "prompts": float(obs.prompts),
        "js_divergence": obs.js_divergence,
        "bpb": obs.live_bpb,
        "loss_increase_pct": obs.loss_increase_pct,
    }
    return {k: float(v) for k, v in figures.items() if v is not None}
