"""`aifactory feedback`: clients' ratings per line and version, and the newest of them."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.store.db import Store
from adapters.store.feedback import FeedbackLog


def read_feedback(store: Store, line: str | None, limit: int) -> dict[str, Any]:
    """The summary per version and the newest `limit` ratings (of one line, or all): the
    JSON export is these, exactly as stored."""
    log = FeedbackLog(store)
    return {
        "versions": [vars(v) for v in log.summary(line)],
        "ratings": [
            {
                "completion_id": r.completion_id,
                "line": r.line,
                "version": r.version,
                "rating": r.rating,
                "correction": r.correction,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in log.rows(line, limit)
        ],
    }


def show_feedback(view: dict[str, Any], console: Console, as_json: bool) -> int:
    if as_json:
        print(json.dumps(view, indent=2))
        return 0
    if not view["versions"]:
        console.print("no feedback yet (clients send it to POST /v1/feedback)", markup=False)
        return 0
    summary = Table(title="feedback per version")
    for col in ("line", "version", "ratings", "mean rating", "corrections"):
        summary.add_column(col)
    for v in view["versions"]:
        summary.add_row(
            Text(v["line"]),
            f"v{v['version']}",
            str(v["ratings"]),
            f"{v['mean_rating']:.3f}",
            str(v["corrections"]),
        )
    console.print(summary)
    newest = Table(title=f"newest {len(view['ratings'])} ratings")
    for col in ("when", "model", "rating", "correction"):
        newest.add_column(col)
    for r in view["ratings"]:
        fix = _shown(r["correction"] or "")
        newest.add_row(
            r["updated_at"][:19],
            Text(f"{r['line']}:v{r['version']}"),
            f"{r['rating']:g}",
            Text(fix if len(fix) <= 60 else fix[:57] + "..."),
        )
    console.print(newest)
    return 0


def _shown(text: str) -> str:
    """A client's text on an operator's terminal: one line, no control characters (no
    escape sequence reaches the terminal, whatever was stored before it was refused)."""
    return "".join(ch if ch.isprintable() else " " for ch in text)
