"""What the watch tick reads for every line at once: one query per table, whatever the
number of lines, so an idle factory of fifty lines costs the daemon little more than one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters.store.cycles import CycleBook
from adapters.store.datasets import DataCatalog
from adapters.store.line_pauses import LinePauses
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook


@dataclass(frozen=True)
class FactoryView:
    champions: dict[str, int] = field(default_factory=dict)  # line -> champion version
    rollouts: dict[str, Any] = field(default_factory=dict)  # line -> its active rollout row
    completed: dict[str, int] = field(default_factory=dict)  # line -> completed cycles
    awaiting: dict[str, set[str]] = field(default_factory=dict)  # cycles waiting for a person
    known: dict[str, set[str]] = field(default_factory=dict)  # line -> data file hashes
    paused: dict[str, str] = field(default_factory=dict)  # line -> who paused it


def read_view(
    registry: ModelRegistry, rollouts: RolloutBook, book: CycleBook, catalog: DataCatalog
) -> FactoryView:
    completed, awaiting = book.tick_counts()
    return FactoryView(
        champions=registry.champions(),
        rollouts=rollouts.all_active(),
        completed=completed,
        awaiting=awaiting,
        known=catalog.known_hashes_by_line(),
        paused={name: row.paused_by for name, row in LinePauses(book.store).all().items()},
    )
