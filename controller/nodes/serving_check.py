"""The evaluator's serving measurement: load the candidate the way serving will and ask it
test requests (the load-and-query check), then time candidate and champion generating in
alternating rounds so both see the same machine load."""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Any

from adapters.energy import HostCpuEnergyMeter
from adapters.store.registry import ModelVersion
from controller.context import LineContext

# greedy generations from fixed prompts, alternating candidate and champion; short enough
# to add about a second per cycle on a small model
SERVING_PROMPTS = ("def ", "import ", "class ", "    return ")
SERVING_TOKENS = 32


@dataclass(frozen=True)
class ServingCheck:
    """`problem` is '' when the candidate answered; `figures` holds latency per token and
    tokens/J per version, measured by `method`."""

    problem: str
    method: str | None = None
    figures: dict[int, dict[str, float | None]] = field(default_factory=dict)


def measure_serving(
    ctx: LineContext, candidate: ModelVersion, champion: ModelVersion | None
) -> ServingCheck:
    gens: dict[int, Any] = {}
    try:
        gens[candidate.version] = ctx.workload.load(
            ctx.registry.verified_path(candidate), threads=1
        )
        first = gens[candidate.version].generate("def ", max_tokens=8, temperature=0.0, seed=0)
        if first.completion_tokens <= 0:
            return ServingCheck(problem="empty completion")
    except Exception as exc:
        return ServingCheck(problem=f"{type(exc).__name__}: {exc}")
    if champion is not None:
        with contextlib.suppress(Exception):  # a broken champion is judged elsewhere
            gens[champion.version] = ctx.workload.load(
                ctx.registry.verified_path(champion), threads=1
            )
    try:
        return _timed_rounds(ctx, gens, candidate.version)
    finally:
        for gen in gens.values():
            close = getattr(gen, "close", None)
            if callable(close):
                close()


def _timed_rounds(ctx: LineContext, gens: dict[int, Any], candidate: int) -> ServingCheck:
    meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
    per_token: dict[int, list[float]] = {v: [] for v in gens}
    spent: dict[int, list[float]] = {v: [0.0, 0.0] for v in gens}  # tokens, joules
    for round_ in range(ctx.runtime.serving_check_rounds):
        for version, gen in gens.items():
            window = meter.begin()
            try:
                done = gen.generate(
                    SERVING_PROMPTS[round_ % len(SERVING_PROMPTS)],
                    max_tokens=SERVING_TOKENS,
                    temperature=0.0,
                    seed=round_,
                )
            except Exception as exc:
                if version == candidate:
                    return ServingCheck(problem=f"{type(exc).__name__}: {exc}")
                continue
            reading = meter.end(window)
            tokens = max(1, done.completion_tokens)
            per_token[version].append(1000.0 * reading.seconds / tokens)
            spent[version][0] += tokens
            spent[version][1] += reading.joules
    figures = {
        version: {
            "latency_ms_per_token": statistics.median(times),
            "tokens_per_joule": spent[version][0] / spent[version][1]
            if spent[version][1] > 0
            else None,
        }
        for version, times in per_token.items()
        if times
    }
    return ServingCheck(problem="", method=meter.method, figures=figures)
