"""Canary rollout: the graph nodes that move live traffic to a blessed challenger in steps.

Each step is one pass through the ``canary`` node: write the step's weight into the
rollout row (desired state, which serving follows), hold it for the policy's interval,
then judge what the step's live traffic showed (``agents.canary.judge_step``). A pass
advances (or promotes after the last step), a failure rolls back, an inconclusive step
extends, pauses for a person (``canary_review``: a LangGraph interrupt, persisted by the
checkpointer, answered by ``aifactory rollout continue|abort``) or follows the policy.
A daemon stopped mid-step resumes that step from its start: the window restarts, nothing
is applied twice (every side effect is keyed by the cycle and step).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from langgraph.types import interrupt

from agents.actions import Action
from agents.canary import LiveFigures, judge_step, next_move
from controller.context import CycleInterrupted, CycleState, LineContext

if TYPE_CHECKING:
    from adapters.serving import LiveWindow

#: Most sampled prompts scored per step (both models score each one).
MAX_SCORED_PROMPTS = 200
#: Champion latencies kept across steps (the reference when it gets no traffic of its own).
MAX_KEPT_LATENCIES = 5000
# How long the end of a step waits for prompts still being scored.
_FINAL_SCORING_S = 2.0
#: Scheduling priority of the scoring thread (Linux nice value): serving goes first.
SCORING_NICE = 19
FINAL = ("promoted", "rolled_back", "aborted")


class RolloutStage:
    """The ``canary`` and ``canary_review`` nodes of the production cycle."""

    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    # deployer hand-over ------------------------------------------------------------------

    def begin(self, cid: str, candidate: int, champion: int, reason: str) -> dict[str, Any]:
        """Make the blessed candidate the challenger and open the cycle's rollout."""
        ctx = self.ctx
        spec = ctx.policy.rollout
        assert spec is not None
        ctx.registry.set_challenger(
            ctx.name, candidate, by="deployer-agent", reason=reason, key=f"{cid}:challenger"
        )
        ctx.rollouts.start(
            ctx.name,
            cid,
            champion=champion,
            challenger=candidate,
            steps=list(spec.steps),
            loss_sample_rate=spec.loss_sample_rate,
        )
        ctx.record(
            Action(
                "deployer",
                "canary_start",
                "taken",
                f"v{candidate} is blessed; canary against v{champion} in steps "
                + ", ".join(f"{w:g}%" for w in spec.steps)
                + f", {spec.step_interval_s:g} s each",
                {
                    "candidate": candidate,
                    "champion": champion,
                    "steps": list(spec.steps),
                    "step_interval_s": spec.step_interval_s,
                    "loss_sample_rate": spec.loss_sample_rate,
                },
            ),
            cid,
            "deployer:canary_start",
        )
        ctx.reporter.info(f"[deployer] canary of v{candidate} starts")
        return {"rollout": "running", "canary_step": 0, "canary_extensions": 0}

    # canary ----------------------------------------------------------------------------

    def canary(self, state: CycleState) -> dict[str, Any]:
        """One step: put the challenger at the step's weight, hold it, judge, act."""
        ctx, cid = self.ctx, state["cycle_id"]
        assert ctx.rollouts is not None
        row = ctx.rollouts.for_cycle(cid)
        assert row is not None
        if row.status in FINAL:  # decided before a crash cut off the checkpoint: finish it
            return self._replay(cid)
        steps: list[float] = json.loads(row.steps)
        step = int(state.get("canary_step") or 0)
        extensions = int(state.get("canary_extensions") or 0)
        weight = steps[step]
        spec = ctx.policy.rollout
        if spec is None or ctx.traffic is None:  # the policy or the daemon changed meanwhile
            why = "serving is off" if spec is not None else "the policy no longer asks for one"
            return self._promote(cid, row.challenger_version, f"canary ended: {why}")
        if row.decision == "abort":
            return self._aborted(cid, row, step, weight)
        ended = self._put_in_service(cid, row, step, weight)
        if ended is not None:
            return ended
        ctx.reporter.info(
            f"[deployer] canary step {step + 1}/{len(steps)}: v{row.challenger_version} takes "
            f"{weight:g}% for {spec.step_interval_s:g} s"
            + (f" (extension {extensions})" if extensions else "")
        )
        held = self._hold(cid, row, step, weight, spec.step_interval_s)
        if isinstance(held, dict):
            return held
        return self._judge(state, cid, row, (step, len(steps), weight, extensions), held)

    def _put_in_service(self, cid: str, row: Any, step: int, weight: float) -> Any:
        """The step's weight into the rollout row (serving follows); None when serving
        carries the challenger, else the rollback that ends the canary."""
        ctx = self.ctx
        ctx.rollouts.update(  # type: ignore[union-attr]
            cid, step=step, weight_pct=weight, status="running", clear_decision=True
        )
        ctx.on_champion_changed()
        served = ctx.traffic.challenger  # type: ignore[union-attr]
        if (
            served is None
            or served[0].version != row.challenger_version
            or (
                ctx.traffic.current is None  # type: ignore[union-attr]
            )
        ):
            return self._roll_back(
                cid,
                row.challenger_version,
                "the challenger could not be put in service (see the deployer's serve event)",
                {"step": step, "weight_pct": weight},
            )
        ctx.traffic.take_window()  # type: ignore[union-attr]  # earlier traffic is not evidence
        return None

    def _hold(
        self, cid: str, row: Any, step: int, weight: float, interval_s: float
    ) -> tuple[LiveWindow, list[tuple[float, float]]] | dict[str, Any]:
        """Hold the step for its interval, scoring sampled prompts as they come: (the step's
        window, the paired losses), or what ended the rollout meanwhile."""
        ctx = self.ctx
        traffic = ctx.traffic
        assert traffic is not None
        serving, served = traffic.current, traffic.challenger
        assert serving is not None and served is not None
        scorer = _PairedScorer(serving.generator, served[0].generator, ctx.reporter)
        try:
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline:
                scorer.offer(traffic.take_prompts())
                if ctx.stop_event.wait(
                    min(ctx.runtime.canary_poll_s, max(0.0, deadline - time.monotonic()))
                ):
                    raise CycleInterrupted(f"{cid}:canary:{step}")
                ended = self._interference(cid, row, step, weight)
                if ended is not None:
                    return ended
            window = traffic.take_window()
            scorer.offer(window.prompts)
            return window, scorer.finish(_FINAL_SCORING_S)
        finally:
            scorer.close()

    def _judge(
        self,
        state: CycleState,
        cid: str,
        row: Any,
        where: tuple[int, int, float, int],
        held: tuple[LiveWindow, list[tuple[float, float]]],
    ) -> dict[str, Any]:
        """The canary agent's verdict on the step's evidence (with an extension's carried
        over), audited, then its next move."""
        ctx, spec = self.ctx, self.ctx.policy.rollout
        assert spec is not None
        step, n_steps, weight, extensions = where
        window, scored = held
        carry = (state.get("canary_carry") or {}) if extensions else {}
        champion = _figures(window, row.champion_version).merged(_kept(carry.get("champion")))
        challenger = _figures(window, row.challenger_version).merged(_kept(carry.get("challenger")))
        pairs = [tuple(x) for x in carry.get("pairs", [])] + scored
        so_far = _kept(state.get("canary_champion")).merged(_figures(window, row.champion_version))
        verdict = judge_step(
            step=step,
            weight_pct=weight,
            champion=champion,
            challenger=challenger,
            champion_so_far=so_far,
            paired_loss=pairs,  # type: ignore[arg-type]
            policy=spec,
            seed=step,
            ratings=self._ratings(row),
        )
        action = verdict.action.with_figures(
            candidate=row.challenger_version,
            champion=row.champion_version,
            window_s=round(time.monotonic() - window.started, 1),
            extension=extensions,
        )
        ctx.record(action, cid, f"canary:step{step}:{extensions}")
        ctx.reporter.info(f"[deployer] {action.reason}")
        move = next_move(
            verdict.outcome, step=step, n_steps=n_steps, extensions=extensions, policy=spec
        )
        base: dict[str, Any] = {"canary_champion": _dump(so_far), "canary_carry": {}}
        ended = self._interference(cid, row, step, weight)  # a last word before acting
        if ended is not None:
            return base | ended
        if move == "advance":
            return base | {"canary_step": step + 1, "canary_extensions": 0}
        if move == "extend":
            carry = {"champion": _dump(champion), "challenger": _dump(challenger)}
            return base | {
                "canary_extensions": extensions + 1,
                "canary_carry": carry | {"pairs": [list(x) for x in pairs]},
            }
        if move == "promote":
            why = (
                "every canary step passed"
                if verdict.outcome == "pass"
                else "the last step was inconclusive and the policy says proceed"
            )
            return base | self._promote(cid, row.challenger_version, why)
        if move == "rollback":
            return base | self._roll_back(
                cid, row.challenger_version, action.reason, action.figures
            )
        return base | self._pause(cid, row, step, weight, extensions, action.reason)

    def _ratings(self, row: Any) -> tuple[list[float], list[float]]:
        """Clients' ratings of (champion, challenger) answers since the rollout began:
        ratings come late and sparse, so every step sees all of them so far."""
        feedback, champion = self.ctx.feedback, row.champion_version
        if feedback is None or champion is None:
            return [], []
        got = feedback.ratings(self.ctx.name, [champion, row.challenger_version], row.started_at)
        return got[champion], got[row.challenger_version]

    def _pause(
        self, cid: str, row: Any, step: int, weight: float, extensions: int, reason: str
    ) -> dict[str, Any]:
        """Too little evidence and the policy says wait: a person answers (interrupt next)."""
        ctx = self.ctx
        ctx.rollouts.update(cid, status="paused", reason=reason)  # type: ignore[union-attr]
        ctx.record(
            Action(
                "deployer",
                "canary_pause",
                "deferred",
                f"v{row.challenger_version} holds {weight:g}% of traffic and waits for a "
                "person: `aifactory rollout continue --reason ...` or "
                "`aifactory rollout abort --reason ...`",
                {"step": step, "weight_pct": weight, "candidate": row.challenger_version},
            ),
            cid,
            f"canary:pause{step}:{extensions}",
        )
        return {"rollout": "paused"}

    def canary_review(self, state: CycleState) -> dict[str, Any]:
        """Wait for a person's answer to a paused step (an interrupt that survives restarts).

        The answer stays on the rollout row until the next step starts (or the rollout
        ends), so a crash while acting on it finds it again on restart."""
        ctx, cid = self.ctx, state["cycle_id"]
        assert ctx.rollouts is not None
        row = ctx.rollouts.for_cycle(cid)
        assert row is not None
        step = int(state.get("canary_step") or 0)
        answer = interrupt(
            {"kind": "canary", "step": step, "candidate_version": row.challenger_version}
        )
        row = ctx.rollouts.for_cycle(cid)
        assert row is not None
        if row.status in FINAL:
            return self._replay(cid)
        decision = row.decision or ("continue" if answer.get("approved") else "abort")
        by = row.decided_by or str(answer.get("by", "?"))
        reason = row.decision_reason or str(answer.get("reason", ""))
        steps: list[float] = json.loads(row.steps)
        figures = {"step": step, "by": by, "reason": reason, "candidate": row.challenger_version}
        if decision != "continue":
            return self._roll_back(
                cid, row.challenger_version, f"aborted by {by}: {reason}", figures, "aborted"
            )
        ctx.record(
            Action("deployer", "canary_continue", "taken", f"continued by {by}: {reason}", figures),
            cid,
            f"canary:continue{step}",
        )
        if step + 1 >= len(steps):
            return self._promote(cid, row.challenger_version, f"last step approved by {by}")
        return {"rollout": "running", "canary_step": step + 1, "canary_extensions": 0}

    # outcomes --------------------------------------------------------------------------

    def _interference(self, cid: str, row: Any, step: int, weight: float) -> dict[str, Any] | None:
        """An abort from a person, or a champion moved by someone else, ends the rollout."""
        ctx = self.ctx
        assert ctx.rollouts is not None
        current = ctx.rollouts.for_cycle(cid)
        if current is not None and current.decision == "abort":
            return self._aborted(cid, current, step, weight)
        champion = ctx.champion_version()
        if champion == row.challenger_version:  # promoted by hand (or by us before a crash)
            return self._promote(cid, row.challenger_version, "the challenger became champion")
        if champion != row.champion_version:
            return self._roll_back(
                cid,
                row.challenger_version,
                f"the champion was changed to v{champion} by someone else during the rollout",
                {"step": step, "weight_pct": weight, "new_champion": champion},
                outcome="aborted",
            )
        return None

    def _aborted(self, cid: str, row: Any, step: int, weight: float) -> dict[str, Any]:
        return self._roll_back(
            cid,
            row.challenger_version,
            f"aborted by {row.decided_by}: {row.decision_reason}",
            {"step": step, "weight_pct": weight, "by": row.decided_by},
            outcome="aborted",
        )

    def _replay(self, cid: str) -> dict[str, Any]:
        """The rollout row is final but the node did not finish: redo the outcome's side
        effects, each keyed, so none happens twice and none is missing."""
        assert self.ctx.rollouts is not None
        row = self.ctx.rollouts.for_cycle(cid)
        assert row is not None
        if row.status == "promoted":
            return self._promote(cid, row.challenger_version, row.reason)
        return self._roll_back(cid, row.challenger_version, row.reason, {}, row.status)

    def _promote(self, cid: str, version: int, reason: str) -> dict[str, Any]:
        """Final status first (serving and a resumed node follow it), then the registry,
        then the audit event; every step is idempotent."""
        ctx = self.ctx
        assert ctx.rollouts is not None
        row = ctx.rollouts.update(cid, status="promoted", weight_pct=100.0, reason=reason)
        previous = row.champion_version
        ctx.registry.promote(
            ctx.name, version, by="deployer-agent", reason=reason, key=f"{cid}:promote"
        )
        ctx.registry.clear_challenger(
            ctx.name, by="deployer-agent", reason="promoted", key=f"{cid}:challenger-cleared"
        )
        ctx.on_champion_changed()
        ctx.record(
            Action(
                "deployer",
                "promote",
                "taken",
                f"v{version} is now the champion: {reason}",
                {
                    "candidate": version,
                    "previous_champion": previous,
                    "steps": json.loads(row.steps),
                    "last_step": row.step + 1,
                },
            ),
            cid,
            "deployer:promote",
        )
        ctx.reporter.info(f"[deployer] v{version} promoted after its canary")
        return {"rollout": "promoted", "promoted": True}

    def _roll_back(
        self,
        cid: str,
        version: int,
        reason: str,
        figures: dict[str, Any],
        outcome: str = "rolled_back",
    ) -> dict[str, Any]:
        roll_back(self.ctx, cid, version, reason, figures, outcome)
        return {"rollout": outcome, "promoted": False}


def roll_back(
    ctx: LineContext,
    cid: str,
    version: int,
    reason: str,
    figures: dict[str, Any],
    outcome: str = "rolled_back",
    by: str = "deployer-agent",
) -> None:
    """End a rollout without promotion: the row final at weight 0 first, then the challenger
    marked and its alias cleared, serving synced, the audit event; each step keyed, so a
    replay after a crash does nothing twice."""
    assert ctx.rollouts is not None
    ctx.rollouts.update(cid, status=outcome, weight_pct=0.0, reason=reason)
    ctx.registry.set_status(ctx.name, version, "rolled_back")
    ctx.registry.clear_challenger(ctx.name, by=by, reason=reason, key=f"{cid}:challenger-cleared")
    ctx.on_champion_changed()
    ctx.record(
        Action(
            "deployer",
            "rollback",
            "taken",
            f"v{version} rolled back: {reason}",
            figures | {"candidate": version, "ended": outcome},
        ),
        cid,
        "deployer:rollback",
    )
    ctx.reporter.info(f"[deployer] v{version} rolled back: {reason}")


class _PairedScorer:
    """(champion, challenger) bits/byte on the same sampled live prompts, scored with the
    generators serving already holds, by a thread at the lowest CPU priority while the step
    is held, so the canary's own analysis stays out of the tail latency it is judging.
    Scores nothing when a model cannot score text: the check then reports too few samples."""

    def __init__(self, champion: Any, challenger: Any, reporter: Any) -> None:
        self.pairs: list[tuple[float, float]] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._offered = 0
        self._cancelled = False
        self._scorers = [getattr(g, "score", None) for g in (champion, challenger)]
        self._thread: threading.Thread | None = None
        if not all(callable(f) for f in self._scorers):
            reporter.info("[deployer] a served model cannot score text: no online loss")
            return
        self._thread = threading.Thread(target=self._run, name="canary-scorer", daemon=True)
        self._thread.start()

    def offer(self, prompts: list[str]) -> None:
        """Queue sampled prompts (the server sampled them at random), up to the step's cap."""
        if self._thread is None:
            return
        for prompt in prompts[: max(0, MAX_SCORED_PROMPTS - self._offered)]:
            self._queue.put(prompt)
            self._offered += 1

    def finish(self, timeout_s: float) -> list[tuple[float, float]]:
        """Wait up to `timeout_s` for the queued prompts; return the pairs scored so far."""
        if self._thread is None:
            return []
        self._queue.put(None)
        self._thread.join(timeout_s)
        return list(self.pairs)

    def close(self) -> None:
        """Let the thread end (and drop its models) whatever ended the step."""
        self._cancelled = True
        self._queue.put(None)

    def _run(self) -> None:
        if sys.platform.startswith("linux"):  # there a thread id renices just this thread
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SCORING_NICE)
        while (prompt := self._queue.get()) is not None:
            if self._cancelled:
                break
            try:
                a, b = self._scorers[0](prompt), self._scorers[1](prompt)
            except Exception:
                continue  # a prompt one model cannot score is simply not a sample
            if a is None or b is None or not (math.isfinite(a) and a > 0):
                continue
            # a challenger that cannot score a live prompt is infinitely worse on it
            self.pairs.append((float(a), float(b) if math.isfinite(b) else math.inf))
        self._scorers = []


def _figures(window: LiveWindow, version: int | None) -> LiveFigures:
    if version is None:
        return LiveFigures()
    return LiveFigures(
        window.requests.get(version, 0),
        window.failures.get(version, 0),
        tuple(window.latencies_ms.get(version, ())),
    )


def _dump(figures: LiveFigures) -> dict[str, Any]:
    return {
        "requests": figures.requests,
        "failures": figures.failures,
        "latencies_ms": list(figures.latencies_ms[-MAX_KEPT_LATENCIES:]),
    }


def _kept(data: dict[str, Any] | None) -> LiveFigures:
    if not data:
        return LiveFigures()
    return LiveFigures(
        int(data.get("requests", 0)),
        int(data.get("failures", 0)),
        tuple(float(x) for x in data.get("latencies_ms", ())),
    )
