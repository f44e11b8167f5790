"""What an agent decides: actions with reasons and the figures they rest on.

Decision functions return these; nodes apply them through adapters and audit each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Outcome = Literal["taken", "refused", "deferred", "failed"]


@dataclass(frozen=True)
class Action:
    agent: str
    action: str
    outcome: Outcome
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def with_figures(self, **extra: Any) -> Action:
        """The same decision with more figures (what the acting node measured around it)."""
        return replace(self, figures=self.figures | extra)
