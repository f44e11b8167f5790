"""The evaluator node: candidate and champion scored on the same held-out data, the serving
check, then the evaluator agent's gates.

recent: held-out tails of the data the champion never saw (all data for a first model);
reference: held-out tails of the data the champion was trained on.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adapters.energy import EnergyReading, HostCpuEnergyMeter
from adapters.store.registry import ModelVersion
from agents.evaluator import EvalObservation, Scores, judge
from controller.budget import eval_key
from controller.context import CycleState, LineContext
from controller.nodes.serving_check import ServingCheck, measure_serving
from controller.retry import PermanentError


class EvaluatorNode:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        candidate = ctx.registry.get(ctx.name, int(state["candidate_version"] or 0))
        dataset = ctx.catalog.get(state["dataset_version"] or "")
        if candidate is None or dataset is None:  # retrying cannot bring them back
            raise PermanentError(
                f"candidate v{state.get('candidate_version')} or dataset "
                f"{state.get('dataset_version')} is not stored"
            )
        champion = ctx.champion()
        champion_data = ctx.catalog.get(champion.dataset_version) if champion else None
        unseen = sorted(
            set(dataset.file_hashes) - set(champion_data.file_hashes if champion_data else ())
        )
        recent = ctx.holdouts(unseen or dataset.file_hashes)
        reference = ctx.holdouts(champion_data.file_hashes) if champion_data else recent
        with (
            self._corrections() as corrections,
            ctx.measuring,  # one in-process measurement at a time: CPU time is per process
        ):
            m = self._measure(candidate, champion, recent, reference, corrections)
        ctx.book_eval(f"{cid}:eval", cid, m.tokens, m.reading)
        if ctx.budget is not None:
            ctx.budget.release(eval_key(cid))  # on the ledger now
        verdict = judge(
            EvalObservation(m.candidate, m.champion, m.champion_problem, m.served.problem or None),
            ctx.policy,
        )
        action = verdict.action.with_figures(
            candidate=candidate.version,
            champion=champion.version if champion else None,
            recent_files=len(unseen or dataset.file_hashes),
            reference_files=len(champion_data.file_hashes) if champion_data else 0,
            eval_tokens=m.tokens,
            eval_joules=round(m.reading.joules, 3),
            energy_method=m.reading.method,
            **({"serving_energy_method": m.served.method} if m.served.method else {}),
        )
        ctx.record(action, cid, "evaluator:bless")
        verdict_text = "blessed" if verdict.blessed else "refused"
        ctx.registry.set_verdict(ctx.name, candidate.version, verdict_text, action.figures)
        ctx.reporter.info(
            f"[evaluator] v{candidate.version} {verdict_text.upper()}: {action.reason}"
        )
        return {"blessed": verdict.blessed}

    @contextmanager
    def _corrections(self) -> Iterator[str | None]:
        """Clients' newest corrections of the line's answers, up to the evaluation's byte
        budget, as a file that lives for the evaluation (None with fewer than the gates'
        `feedback_min_corrections`): both models are scored on what users said the
        answers should have been."""
        ctx = self.ctx
        feedback, wanted = ctx.feedback, ctx.policy.gates.feedback_min_corrections
        texts = feedback.corrections(ctx.name) if feedback is not None else []
        if len(texts) < wanted:
            yield None
            return
        kept, size = [], 0
        for text in texts:  # newest first: what is scored is the newest
            n = len(text.encode("utf-8")) + 1
            if kept and size + n > ctx.policy.data.eval_max_bytes:
                break
            kept.append(text)
            size += n
        folder = ctx.trials_dir.parent / "feedback"
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=folder, suffix=".txt", delete=False
        ) as f:
            f.write("\n".join(kept) + "\n")
        try:
            yield f.name
        finally:
            Path(f.name).unlink(missing_ok=True)

    def _measure(
        self,
        candidate: ModelVersion,
        champion: ModelVersion | None,
        recent: list[str],
        reference: list[str],
        corrections: str | None = None,
    ) -> _Measured:
        """Both models' scores and the serving check, in one energy window."""
        ctx = self.ctx
        meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
        window = meter.begin()
        scorer = _Scorer(ctx, recent, reference, corrections)
        cand = scorer.scores(candidate)
        champ = scorer.scores(champion) if champion is not None else None
        champion_problem = None
        if champion is not None and (champ is None or not champ.finite):
            champion_problem = scorer.problems.get(champion.version, "its scores are not finite")
        served = ServingCheck(problem="not scored")
        if cand is not None:
            served = measure_serving(ctx, candidate, champion if champ is not None else None)
            cand = replace(
                cand, energy_method=served.method, **served.figures.get(candidate.version, {})
            )
            if champ is not None and champion is not None:
                champ = replace(
                    champ, energy_method=served.method, **served.figures.get(champion.version, {})
                )
        reading = meter.end(window)  # the serving check is evaluation work too: booked with it
        return _Measured(cand, champ, champion_problem, served, scorer.tokens, reading)


@dataclass(frozen=True)
class _Measured:
    candidate: Scores | None
    champion: Scores | None
    champion_problem: str | None
    served: ServingCheck
    tokens: int
    reading: EnergyReading


class _Scorer:
    """Scores models on the recent and reference sets, counting the tokens it reads and
    keeping why a model could not be scored."""

    def __init__(
        self,
        ctx: LineContext,
        recent: list[str],
        reference: list[str],
        corrections: str | None = None,
    ) -> None:
        self.ctx, self.recent, self.reference = ctx, recent, reference
        self.corrections = corrections
        self.tokens = 0
        self.problems: dict[int, str] = {}

    def scores(self, model: ModelVersion) -> Scores | None:
        try:
            path = self.ctx.registry.verified_path(model)
            r = self.ctx.evaluate(path, self.recent)
            f = self.ctx.evaluate(path, self.reference)
            self.tokens += r.tokens + f.tokens
        except Exception as exc:
            self.problems[model.version] = f"{type(exc).__name__}: {exc}"
            self.ctx.reporter.info(f"[evaluator] v{model.version} could not be scored: {exc}")
            return None
        return Scores(r.bpb, f.bpb, tuple(r.chunk_bpb), feedback_bpb=self._on_corrections(path))

    def _on_corrections(self, path: str) -> float | None:
        """Bits/byte on clients' corrections; None without enough of them, NaN when they
        could not be scored (a gate on it then fails, never passes silently)."""
        if self.corrections is None:
            return None
        try:
            c = self.ctx.evaluate(path, [self.corrections])
        except Exception as exc:
            self.ctx.reporter.info(f"[evaluator] corrections could not be scored: {exc}")
            return math.nan
        self.tokens += c.tokens
        return c.bpb
