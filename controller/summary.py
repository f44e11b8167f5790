"""The table printed when the daemon stops: each line's cycles, then the factory's totals."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from controller.cycle_runner import CycleRun, ordered_stages

if TYPE_CHECKING:
    from controller.line import ProductionLine

COLUMNS = (
    "cycle",
    "trigger",
    "trials",
    "candidate",
    "verdict",
    "promoted",
    "eval bits/byte",
    "train tokens",
    "joules",
    "tokens/J",
    "stages (s)",
)


def print_summary(console: Console, lines: Sequence[ProductionLine]) -> None:
    for line in lines:
        _line_summary(console, line)


def _line_summary(console: Console, line: ProductionLine) -> None:
    ctx = line.ctx
    table = Table(title=f"aifactory run summary: {ctx.name}")
    for col in COLUMNS:
        table.add_column(col)
    totals = {"tokens": 0, "joules": 0.0, "trained": 0, "promoted": 0}
    methods: set[str] = set()
    for run in line.runs:
        table.add_row(*_row(line, run, totals, methods))
    console.print(table)
    champ = ctx.champion()
    label = "+".join(sorted(methods)) or "estimated"
    joules = totals["joules"]
    console.print(
        f"models trained: {totals['trained']}  promoted: {totals['promoted']}  champion: "
        f"{f'v{champ.version}' if champ else 'none'}  tokens: {totals['tokens']:,}  joules: "
        f"{joules:,.0f} ({label})  tokens/J: "
        f"{(totals['tokens'] / joules if joules else 0):,.0f} ({label})",
        highlight=False,
        markup=False,
    )


def _row(
    line: ProductionLine, run: CycleRun, totals: dict[str, float], methods: set[str]
) -> tuple[str, ...]:
    ctx = line.ctx
    row = ctx.book.get(run.cycle_id)
    summary = json.loads(row.summary) if row else {}
    cand = ctx.registry.get(ctx.name, run.candidate) if run.candidate else None
    bpb = cand.evaluation.get("candidate_recent_bpb") if cand else None
    tok = int(summary.get("train_tokens", 0)) + int(summary.get("eval_tokens", 0))
    joules = float(summary.get("train_joules", 0)) + float(summary.get("eval_joules", 0))
    method = summary.get("energy_method", "estimated")
    if tok:
        methods.add(method)
    totals["tokens"] += tok
    totals["joules"] += joules
    totals["trained"] += int(summary.get("trials", 0))
    totals["promoted"] += int(run.promoted)
    verdict = "-" if run.blessed is None else ("blessed" if run.blessed else "refused")
    return (
        run.cycle_id,
        run.trigger,
        str(summary.get("trials", 0)),
        f"v{run.candidate}" if run.candidate else "-",
        verdict,
        "yes" if run.promoted else "no",
        f"{bpb:.4f}" if bpb else "-",
        f"{int(summary.get('train_tokens', 0)):,}",
        f"{joules:,.0f} ({method})" if tok else "-",
        f"{tok / joules:,.0f}" if joules else "-",
        " ".join(f"{k}={v:.1f}" for k, v in ordered_stages(summary.get("stage_s") or {})),
    )
