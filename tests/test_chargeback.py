"""The chargeback report: per line and per owner, every level summing to the factory's."""

from __future__ import annotations

from adapters.store.tables import LedgerRow
from controller.report import build_chargeback


def _row(key: str, line: str, kind: str, tokens: int, joules: float, method: str) -> LedgerRow:
    return LedgerRow(
        key=key,
        policy_name=line,
        day="2026-12-02",
        kind=kind,
        tokens=tokens,
        joules=joules,
        method=method,
    )


def test_lines_and_owners_sum_to_the_factory_total() -> None:
    rows = [
        _row("1", "a", "train", 1000, 10.0, "estimated"),
        _row("2", "a", "eval", 200, 2.0, "estimated"),
        _row("3", "b", "train", 3000, 30.0, "measured"),
        _row("4", "b", "serve", 50, 0.0, "unmetered"),
        _row("5", "c", "train", 500, 5.0, "estimated"),
        _row("6", "gone", "train", 100, 1.0, "estimated"),  # a line since removed
    ]
    charge = build_chargeback(rows, {"a": "team-a", "b": "team-a", "c": "team-c"})
    out = charge.as_dict()
    lines = {r["line"]: r for r in out["lines"]}
    owners = {r["owner"]: r for r in out["owners"]}
    assert lines["a"]["train_tokens"] == 1000 and lines["a"]["eval_tokens"] == 200
    assert lines["b"]["serve_tokens"] == 50 and lines["b"]["energy"] == "measured"
    assert lines["gone"]["owner"] == "unowned"
    assert owners["team-a"]["train_tokens"] == 4000 and owners["team-a"]["joules"] == 42.0
    for key in ("train_tokens", "eval_tokens", "serve_tokens", "joules"):
        total = out["total"][key]
        assert total == sum(r[key] for r in out["lines"]) == sum(r[key] for r in out["owners"])
    assert out["total"]["joules"] == 48.0
    assert out["total"]["energy"] == "measured+estimated"
