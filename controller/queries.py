"""What operators read: one definition of every view of the store, shared by the CLI
(`aifactory status|models|audit|report ...`) and the console's JSON API, so a table and an
endpoint can never disagree. Every function returns plain JSON-able data."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.store.audit import AuditEvent, AuditLog
from adapters.store.cycles import CycleBook
from adapters.store.db import Store
from adapters.store.ledger import Ledger, today_utc
from adapters.store.line_pauses import LinePauses
from adapters.store.registry import ModelRegistry
from adapters.store.rollouts import RolloutBook
from controller.report import By, build_chargeback, build_report
from policies.loader import PolicyError, load_policy
from policies.model import Policy

#: audit actions that tell a rollout's story (weights, verdicts, pauses, the end)
_ROLLOUT_ACTIONS = frozenset(
    {
        "canary_start",
        "canary_weight",
        "canary_step",
        "canary_pause",
        "canary_continue",
        "rollout_continue",
        "rollout_abort",
        "promote",
        "rollback",
    }
)


def daemon_alive(pid: int, heartbeat_at: str, stale_s: float = 120.0) -> bool:
    """Alive: a pid that exists here and a recent heartbeat (the daemon may run elsewhere)."""
    if not pid or not heartbeat_at:
        return False
    try:
        beat = datetime.strptime(heartbeat_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return False
    if (datetime.now(UTC) - beat).total_seconds() > stale_s:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Queries:
    """The store as operators see it. ``stale_s``: a heartbeat older than this shows the
    daemon as not running; ``policy_path``: the file to read a line's budgets from before
    any daemon ran it."""

    store: Store
    models_dir: Path
    stale_s: float = 120.0
    member_stale_s: float = 15.0
    policy_path: Path | None = None

    def __post_init__(self) -> None:
        self.book = CycleBook(self.store)
        self.audit = AuditLog(self.store)
        self.registry = ModelRegistry(self.store, self.models_dir)
        self.rollouts = RolloutBook(self.store)
        self.ledger = Ledger(self.store)
        self.pauses = LinePauses(self.store)

    def lines(self) -> list[str]:
        return list(self.book.policy_names())

    def has_line(self, name: str) -> bool:
        return name in self.lines()

    # status ---------------------------------------------------------------------------

    def factory(self) -> dict[str, Any]:
        """Every line's status and the members sharing the store."""
        from controller.members_view import read_members

        return {
            "lines": [self.line_status(name) for name in self.lines()],
            "members": read_members(self.store, self.member_stale_s),
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def line_status(self, name: str) -> dict[str, Any]:
        """One line: champion, last cycle, today's spend against the budgets of the policy
        version it runs, its daemon, approvals waiting, its rollout and any pause."""
        champion_v = self.registry.alias(name, "champion")
        champ = self.registry.get(name, champion_v) if champion_v else None
        last = next(iter(self.book.recent(name, 1)), None)
        state = self.book.daemon_state(name)
        pause = self.pauses.get(name)
        return {
            "policy": name,
            "champion": None
            if champ is None
            else {
                "version": champ.version,
                "valid_bpb": champ.valid_bpb,
                "recent_bpb": champ.evaluation.get("candidate_recent_bpb"),
                "created_at": champ.created_at,
            },
            "previous": self.registry.alias(name, "previous"),
            "last_cycle": None if last is None else _cycle_brief(last),
            "today": self._today(name, state),
            "daemon": None if state is None else self._daemon(state),
            "pending_approvals": [
                {"id": a.id, "cycle": a.cycle_id, "version": a.version}
                for a in self.book.approvals(name, "pending")
            ],
            "rollout": self.active_rollout(name),
            "paused": None
            if pause is None
            else {"by": pause.paused_by, "reason": pause.reason, "at": pause.paused_at},
        }

    def _today(self, name: str, state: Any) -> dict[str, Any]:
        day = self.ledger.totals(name, day=today_utc())
        policy: Policy | None = self.book.policy(state.policy_version) if state else None
        if policy is None and self.policy_path is not None:  # no daemon ran the line yet
            try:
                policy = load_policy(self.policy_path)
            except PolicyError:
                policy = None
        budgets = policy.budgets if policy else None
        return {
            "tokens": day.tokens,
            "joules": round(day.joules, 1),
            "energy_method": day.method,
            "training_tokens_budget": budgets.training_tokens_per_day if budgets else None,
            "energy_kwh_budget": budgets.energy_kwh_per_day if budgets else None,
        }

    def _daemon(self, state: Any) -> dict[str, Any]:
        return {
            "running": daemon_alive(state.pid, state.heartbeat_at, self.stale_s),
            "pid": state.pid,
            "heartbeat_at": state.heartbeat_at,
            "next_cycle_at": state.next_cycle_at,
            "serving_url": state.serving_url,
            "console_url": state.console_url,
            "served_version": state.served_version,
            "energy": state.energy_source,
            "telemetry": json.loads(state.telemetry or "{}"),
            "cluster": json.loads(state.cluster or "{}"),
        }

    def active_rollout(self, name: str) -> dict[str, Any] | None:
        row = self.rollouts.active(name)
        if row is None:
            return None
        steps = json.loads(row.steps)
        return {
            "cycle": row.cycle_id,
            "challenger": row.challenger_version,
            "weight_pct": row.weight_pct,
            "step": f"{row.step + 1}/{len(steps)}",
            "status": row.status,
            "reason": row.reason,
        }

    # models and cycles -------------------------------------------------------------------

    def models(self, name: str) -> list[dict[str, Any]]:
        """Every version of the line with its aliases and training tokens per joule."""
        by_version: dict[int, list[str]] = {}
        for alias, v in self.registry.aliases(name).items():
            by_version.setdefault(v, []).append(alias)
        out = []
        for m in self.registry.versions(name):
            data = dict(m.__dict__) | {"aliases": sorted(by_version.get(m.version, []))}
            data["tokens_per_joule"] = round(m.tokens / m.joules, 3) if m.joules > 0 else None
            out.append(data)
        return out

    def model(self, name: str, version: int) -> dict[str, Any] | None:
        """One version with its lineage: aliases now and every alias move that touched it."""
        entry = next((m for m in self.models(name) if m["version"] == version), None)
        if entry is None:
            return None
        entry["alias_history"] = [
            {
                "alias": h.alias,
                "from": h.from_version,
                "to": h.to_version,
                "at": h.at,
                "by": h.by,
                "reason": h.reason,
            }
            for h in self.registry.alias_history(name)
            if version in (h.from_version, h.to_version)
        ]
        return entry

    def cycles(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """Recent cycles, newest first, with what they trained and spent (the ledger's)."""
        rows = self.book.recent(name, limit)
        spent = {r.key: r for r in build_report(self.ledger.rows(name), "cycle")}
        out = []
        for row in rows:
            figures = spent.get(row.id)
            brief = _cycle_brief(row) | {"number": row.number, "policy_version": row.policy_version}
            if figures is not None:
                brief |= {
                    "tokens": figures.train_tokens,
                    "joules": round(figures.joules, 3),
                    "energy_label": figures.energy_label,
                    "tokens_per_joule": figures.as_dict()["train_tokens_per_joule"],
                }
            out.append(brief)
        return out

    def trials(self, cycle_id: str) -> list[dict[str, Any]] | None:
        """A cycle's trials: parameters and status, with quality, energy and the Pareto
        front for those that finished usable. None for an unknown cycle."""
        if self.book.get(cycle_id) is None:
            return None
        points = {p.trial_key: p for p in self.book.pareto(cycle_id)}
        out = []
        for t in self.book.trials(cycle_id):
            p = points.get(t.key)
            out.append(
                {
                    "key": t.key,
                    "number": t.optuna_number,
                    "status": t.status,
                    "params": json.loads(t.params or "{}"),
                    "valid_bpb": _finite(p.valid_bpb) if p else None,
                    "energy_cost": _finite(p.energy_cost) if p else None,
                    "on_front": bool(p and p.on_front),
                    "error": t.error,
                }
            )
        return out

    def rollouts_of(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        """Recent rollouts, each with its story from the audit log: weights and verdicts
        (the events its cycle wrote, the serving side's weight changes included)."""
        rows = self.rollouts.recent(name, limit)
        if not rows:
            return []
        oldest = min(r.started_at for r in rows)
        events: list[AuditEvent] = []
        for action in sorted(_ROLLOUT_ACTIONS):
            events += self.audit.events(line=name, since=oldest, action=action)
        events.sort(key=lambda e: e.seq)
        return [_rollout(row, events) for row in rows]

    # ledger and audit --------------------------------------------------------------------

    def report(self, name: str, by: By) -> list[dict[str, Any]]:
        cycle_models = {m.cycle_id: m.version for m in self.registry.versions(name)}
        return [r.as_dict() for r in build_report(self.ledger.rows(name), by, cycle_models)]

    def chargeback(self) -> Any:
        """Tokens and joules per line and owner, summing to the factory's totals."""
        owners = {}
        for name in self.lines():
            state = self.book.daemon_state(name)
            if state is not None and state.owner:
                owners[name] = state.owner
        return build_chargeback(self.ledger.all_rows(), owners)

    def audit_events(self, **filters: Any) -> list[AuditEvent]:
        return self.audit.events(**filters)

    def verify(self) -> dict[str, Any]:
        report = self.audit.verify()
        return {
            "ok": report.ok,
            "events": report.events,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem or None,
        }

    def approvals(self, line: str | None = None, status: str | None = None) -> list[Any]:
        return [
            {
                "id": a.id,
                "line": a.policy_name,
                "cycle_id": a.cycle_id,
                "version": a.version,
                "status": a.status,
                "requested_at": a.requested_at,
                "decided_at": a.decided_at,
                "decided_by": a.decided_by,
                "reason": a.reason,
            }
            for a in self.book.approvals(line, status)
        ]


def event_dict(e: AuditEvent) -> dict[str, Any]:
    return dict(e.__dict__)


def _cycle_brief(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "trigger": row.trigger,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unusable figure is shown as missing."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def _rollout(row: Any, events: list[AuditEvent]) -> dict[str, Any]:
    """A rollout row with the audit events of its cycle, oldest first."""
    history = [
        {
            "at": e.ts,
            "action": e.action,
            "outcome": e.outcome,
            "reason": e.reason,
            "weight_pct": e.figures.get("to_pct", e.figures.get("weight_pct")),
        }
        for e in events
        if e.cycle_id == row.cycle_id or _older_weight_event(row, e)
    ]
    return {
        "cycle_id": row.cycle_id,
        "challenger_version": row.challenger_version,
        "champion_version": row.champion_version,
        "steps": json.loads(row.steps),
        "step": row.step,
        "weight_pct": row.weight_pct,
        "status": row.status,
        "decision": row.decision,
        "reason": row.reason,
        "started_at": row.started_at,
        "updated_at": row.updated_at,
        "history": history,
    }


def _older_weight_event(row: Any, e: AuditEvent) -> bool:
    """Weight changes written before they named their cycle: the challenger's, from the
    rollout's start to its end (no end while it runs)."""
    if e.cycle_id is not None or e.action != "canary_weight":
        return False
    if e.figures.get("version") != row.challenger_version or e.ts < row.started_at:
        return False
    return row.status in ("running", "paused") or e.ts <= (row.updated_at or e.ts)
