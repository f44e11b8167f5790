"""The factory's dashboard in numbers: tokens trained, evaluated and served, joules, tokens/J.

Pure aggregation over ledger rows (and the registry's lineage for per-model figures), so the
CLI, CSV and JSON outputs share one definition.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from adapters.store.tables import LedgerRow

By = Literal["cycle", "day", "model"]


@dataclass
class ReportRow:
    key: str
    train_tokens: int = 0
    eval_tokens: int = 0
    serve_tokens: int = 0
    llm_tokens: int = 0
    train_joules: float = 0.0
    eval_joules: float = 0.0
    measured_joules: float = 0.0
    estimated_joules: float = 0.0

    @property
    def joules(self) -> float:
        return self.train_joules + self.eval_joules

    @property
    def train_tokens_per_joule(self) -> float | None:
        return self.train_tokens / self.train_joules if self.train_joules > 0 else None

    @property
    def energy_label(self) -> str:
        if self.measured_joules and self.estimated_joules:
            return "measured+estimated"
        if self.measured_joules:
            return "measured"
        return "estimated" if self.estimated_joules else "-"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["joules"] = round(self.joules, 3)
        tpj = self.train_tokens_per_joule
        d["train_tokens_per_joule"] = None if tpj is None else round(tpj, 3)
        d["energy"] = self.energy_label
        return d


def build_report(
    rows: Iterable[LedgerRow], by: By, cycle_models: dict[str, int] | None = None
) -> list[ReportRow]:
    """Group ledger rows by cycle, day or model (a cycle's work counts for the model it made)."""
    cycle_models = cycle_models or {}
    out: dict[str, ReportRow] = {}
    for r in rows:
        if by == "day":
            key = r.day
        elif by == "cycle":
            key = r.cycle_id or "(serving)"
        else:
            version = r.model_version if r.kind == "serve" else cycle_models.get(r.cycle_id or "")
            key = f"v{version}" if version is not None else "(no model)"
        row = out.setdefault(key, ReportRow(key))
        if r.kind == "train":
            row.train_tokens += r.tokens
            row.train_joules += r.joules
        elif r.kind == "eval":
            row.eval_tokens += r.tokens
            row.eval_joules += r.joules
        elif r.kind == "serve":
            row.serve_tokens += r.tokens
        elif r.kind == "llm":
            row.llm_tokens += r.tokens
        if r.method == "measured":
            row.measured_joules += r.joules
        elif r.joules:
            row.estimated_joules += r.joules
    return [out[k] for k in sorted(out)]


def _add(total: ReportRow, row: ReportRow) -> None:
    for name in (
        "train_tokens",
        "eval_tokens",
        "serve_tokens",
        "llm_tokens",
        "train_joules",
        "eval_joules",
        "measured_joules",
        "estimated_joules",
    ):
        setattr(total, name, getattr(total, name) + getattr(row, name))


@dataclass(frozen=True)
class Chargeback:
    """Per line, per owner (team) and the factory's total; each level sums to the next."""

    lines: list[ReportRow]
    owners: list[ReportRow]
    total: ReportRow
    owner_of: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": [
                r.as_dict() | {"line": r.key, "owner": self.owner_of[r.key]} for r in self.lines
            ],
            "owners": [r.as_dict() | {"owner": r.key} for r in self.owners],
            "total": self.total.as_dict(),
        }

    def to_csv(self) -> str:
        """One row per line, then per owner, then the factory's total (`level` says which)."""
        rows = [
            {"level": "line", "line": r.key, "owner": self.owner_of[r.key]} | r.as_dict()
            for r in self.lines
        ]
        rows += [{"level": "owner", "line": "", "owner": r.key} | r.as_dict() for r in self.owners]
        rows.append({"level": "total", "line": "", "owner": ""} | self.total.as_dict())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def build_chargeback(rows: Iterable[LedgerRow], owners: dict[str, str]) -> Chargeback:
    """The ledger of every line, grouped by line and by the line's owner (`owners`: line ->
    team; a line no longer in the factory is charged to "unowned")."""
    by_line: dict[str, ReportRow] = {}
    for r in rows:
        one = build_report([r], "cycle")[0]
        _add(by_line.setdefault(r.policy_name, ReportRow(r.policy_name)), one)
    owner_of = {line: owners.get(line) or "unowned" for line in by_line}
    by_owner: dict[str, ReportRow] = {}
    total = ReportRow("total")
    for line, row in by_line.items():
        _add(by_owner.setdefault(owner_of[line], ReportRow(owner_of[line])), row)
        _add(total, row)
    return Chargeback(
        [by_line[k] for k in sorted(by_line)],
        [by_owner[k] for k in sorted(by_owner)],
        total,
        owner_of,
    )


def to_csv(rows: list[ReportRow]) -> str:
    buf = io.StringIO()
    dicts = [r.as_dict() for r in rows]
    fields = list(dicts[0]) if dicts else list(ReportRow("x").as_dict())
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(dicts)
    return buf.getvalue()
