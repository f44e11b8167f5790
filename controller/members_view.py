"""The members sharing a store, as `aifactory status` shows them (PostgreSQL only)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.store.db import Store
from adapters.store.lease import LeaseTable, member_view


def read_members(store: Store, stale_s: float) -> list[dict[str, Any]]:
    """Every member with its role, term, heartbeat age and (the leader) lease expiry. A
    member silent for longer than `stale_s` shows as gone."""
    if store.is_sqlite:
        return []
    table = LeaseTable(store)
    lease, now = table.current(), table.now()
    out = []
    for row in table.members():
        view = member_view(row, now, lease)
        if view["role"] != "stopped" and view["heartbeat_age_s"] > stale_s:
            view["role"] = "gone"
        out.append(view)
    return out


def print_members(members: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="members (daemons sharing this store)")
    for col in ("member", "role", "term", "heartbeat", "lease", "serving", "fenced"):
        table.add_column(col)
    for m in members:
        lease = m["lease_expires_in_s"]
        table.add_row(
            Text(m["id"]),
            Text(m["role"]),
            str(m["epoch"]),
            f"{m['heartbeat_age_s']:.1f}s ago",
            f"expires in {lease:.1f}s" if lease is not None else "",
            Text(m["serving_url"] or ""),
            str(m["fenced_writes"] or ""),
        )
    console.print(table)
