"""What operators do: approve or reject a promotion, roll back, continue or abort a paused
canary, pause or resume a line. One definition shared by the CLI and the console's API, so
each action is checked, recorded and audited the same way whoever asks ("approved by
ops-alice"). The store holds the desired state; the running daemon acts on it within a tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.store.audit import AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.line_pauses import LinePauses
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook

Refusal = Literal["not_found", "conflict", "invalid"]
_MAX_BY = 128  # the store keeps who decided in columns this wide


class ActionRefused(Exception):
    """The store said no (nothing to approve, already decided, nothing to roll back)."""

    def __init__(self, kind: Refusal, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ActionDone:
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class OperatorActions:
    """Every operator action, audited with who asked (``by``) and why (``reason``)."""

    def __init__(self, registry: ModelRegistry, audit: AuditLog) -> None:
        store = registry.store
        self.registry, self.audit = registry, audit
        self.book, self.rollouts, self.pauses = (
            CycleBook(store),
            RolloutBook(store),
            LinePauses(store),
        )

    def decide_approval(self, approval_id: int, approved: bool, by: str, reason: str) -> ActionDone:
        verb = "approve" if approved else "reject"
        try:
            row = self.book.decide_approval(approval_id, approved, by, reason)
        except KeyError as exc:
            raise ActionRefused("not_found", exc.args[0]) from exc
        except ValueError as exc:
            raise ActionRefused("conflict", exc.args[0]) from exc
        self.audit.append(
            agent="operator",
            action=verb,
            outcome="taken",
            reason=f"{by} {row.status} v{row.version}: {reason}",
            figures={"approval_id": row.id, "version": row.version, "by": by},
            cycle_id=row.cycle_id,
            line=row.policy_name,
        )
        return ActionDone(
            f"approval {row.id} {row.status}; the daemon resumes {row.cycle_id} within one tick",
            {"approval": {"id": row.id, "line": row.policy_name, "status": row.status}},
        )

    def rollback(self, line: str, to: int | None, by: str, reason: str) -> ActionDone:
        """Restore the previous champion (or ``to``); a refusal is audited too."""
        _check_by(by)
        current = self.registry.alias(line, "champion")
        try:
            if to is not None and to == current:
                raise LookupError(f"v{current} is already the champion")
            before, after = self.registry.rollback(line, to=to, by=by, reason=reason)
        except (LookupError, KeyError) as exc:
            why = exc.args[0] if exc.args else str(exc)
            self.audit.append(
                agent="operator",
                action="rollback",
                outcome="refused",
                reason=f"{by}: {why}",
                figures={"to": to, "champion": current, "by": by},
                line=line,
            )
            kind: Refusal = "not_found" if isinstance(exc, KeyError) else "conflict"
            raise ActionRefused(kind, f"rollback refused: {why}") from exc
        self.audit.append(
            agent="operator",
            action="rollback",
            outcome="taken",
            reason=f"{by}: champion v{before} -> v{after}: {reason}",
            figures={"from": before, "to": after, "by": by},
            line=line,
        )
        return ActionDone(
            f"champion is now v{after} (was v{before}); a running daemon switches serving "
            "within one tick",
            {"champion": after, "previous": before},
        )

    def decide_rollout(self, line: str, decision: str, by: str, reason: str) -> ActionDone:
        """A person's answer to a paused canary step (continue) or any rollout (abort)."""
        _check_by(by)
        try:
            row = self.rollouts.decide(line, decision, by, reason)
        except LookupError as exc:
            raise ActionRefused("not_found", exc.args[0]) from exc
        except ValueError as exc:
            raise ActionRefused("conflict", exc.args[0]) from exc
        self.audit.append(
            agent="operator",
            action=f"rollout_{decision}",
            outcome="taken",
            reason=f"{by}: {decision} the rollout of v{row.challenger_version}: {reason}",
            figures={"version": row.challenger_version, "step": row.step, "by": by},
            cycle_id=row.cycle_id,
            line=line,
        )
        return ActionDone(
            f"rollout of v{row.challenger_version}: {decision} recorded; the daemon acts on "
            "it within one tick",
            {"rollout": {"cycle_id": row.cycle_id, "decision": decision}},
        )

    def pause(self, line: str, by: str, reason: str) -> ActionDone:
        """No new cycle starts on the line; one running goes on; serving goes on."""
        _check_by(by)
        try:
            row = self.pauses.pause(line, by, reason)
        except ValueError as exc:
            raise ActionRefused("conflict", exc.args[0]) from exc
        self.audit.append(
            agent="operator",
            action="pause_line",
            outcome="taken",
            reason=f"{by} paused line {line}: {reason}",
            figures={"by": by, "paused_at": row.paused_at},
            line=line,
        )
        return ActionDone(f"line {line} paused: it starts no new cycle until resumed")

    def resume(self, line: str, by: str, reason: str) -> ActionDone:
        _check_by(by)
        try:
            row = self.pauses.resume(line)
        except ValueError as exc:
            raise ActionRefused("conflict", exc.args[0]) from exc
        self.audit.append(
            agent="operator",
            action="resume_line",
            outcome="taken",
            reason=f"{by} resumed line {line}: {reason}",
            figures={"by": by, "paused_by": row.paused_by, "paused_at": row.paused_at},
            line=line,
        )
        return ActionDone(f"line {line} resumed: its cycles start again on their triggers")


def _check_by(by: str) -> None:
    if not by or len(by) > _MAX_BY:
        raise ActionRefused("invalid", f"who decides must be 1 to {_MAX_BY} characters")
