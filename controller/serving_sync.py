"""Serving follows the registry: each line's endpoint serves what its `champion` alias and
its active rollout say (reconcile), so any alias move, by an agent or by a person from
another shell, reaches the live server the same way.

A load failure is audited once per version and serving keeps what it has.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable

from adapters.serving import ServedModel, ServingServer
from adapters.store.audit import AuditLog
from adapters.store.ledger import Ledger
from adapters.store.registry import ModelVersion
from controller.context import LineContext


class ServingSync:
    def __init__(
        self, server: ServingServer, ledger: Ledger, audit: AuditLog, say: Callable[[str], None]
    ) -> None:
        self.server = server
        self.ledger = ledger  # the member's own (never fenced): every member serves
        self.audit = audit
        # served-token rows are keyed per process run (two members may share a pid)
        self._run = secrets.token_hex(4)
        self._say = say
        self._locks: dict[str, threading.Lock] = {}  # one per line: a slow load blocks no other
        self._locks_lock = threading.Lock()
        self._tokens_lock = threading.Lock()
        self._served_tokens: dict[tuple[str, int], int] = {}

    def _line_lock(self, line: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(line, threading.Lock())

    def sync(self, ctx: LineContext) -> None:
        """Reconcile one line: the champion, and during a canary the challenger at its weight."""
        endpoint = self.server.line(ctx.name)
        endpoint.max_tokens_limit = ctx.policy.serving.max_tokens
        with self._line_lock(ctx.name):
            champion = ctx.champion()
            current = endpoint.current
            if champion is None:
                return
            if current is not None and current.version == champion.version:
                self._sync_canary(ctx, current)
                return
            served = self._load(
                ctx,
                champion,
                f"v{champion.version} for serving",
                "still serving " + (f"v{current.version}" if current else "nothing"),
                key=f"serve-failed:{ctx.name}:{champion.version}:{champion.artefact_sha256}",
            )
            if served is None:
                return
            endpoint.swap(served)
            self.audit.append(
                agent="deployer",
                action="serve",
                outcome="taken",
                reason=f"now serving {ctx.name}:v{champion.version} at {self.server.url}/v1",
                figures={
                    "line": ctx.name,
                    "version": champion.version,
                    "previous": current.version if current else None,
                    "url": self.server.url,
                },
                policy_version=ctx.policy.version,
                line=ctx.name,
            )
            self._say(f"[deployer] serving {ctx.name}:v{champion.version} at {self.server.url}/v1")
            self._sync_canary(ctx, served)

    def _sync_canary(self, ctx: LineContext, champion: ServedModel) -> None:
        """Route the active rollout's share of the line's traffic to its challenger (or none)."""
        endpoint = self.server.line(ctx.name)
        rollout = ctx.rollouts.active(ctx.name) if ctx.rollouts else None
        have = endpoint.challenger
        if rollout is None or rollout.champion_version != champion.version:
            if have is not None:
                endpoint.swap(champion)
                self._say(f"[deployer] canary {ctx.name}:v{have[0].version} out of service")
            return
        version, weight = rollout.challenger_version, rollout.weight_pct
        if have is not None and have[0].version == version:
            if abs(have[1] - weight) > 1e-9:
                endpoint.route(champion, have[0], weight, rollout.loss_sample_rate)
                self._audit_weight(ctx, version, have[1], weight, rollout.cycle_id)
            return
        served = self._load(
            ctx,
            ctx.registry.get(ctx.name, version),
            f"canary v{version}",
            "its share stays on the champion",
            key=f"serve-failed:{ctx.name}:canary:{version}",
        )
        if served is None:
            return
        endpoint.route(champion, served, weight, rollout.loss_sample_rate)
        self._audit_weight(ctx, version, 0.0, weight, rollout.cycle_id)

    def _load(
        self, ctx: LineContext, model: ModelVersion | None, what: str, otherwise: str, key: str
    ) -> ServedModel | None:
        """Load a registered version as serving runs it (checksum verified, one torch thread)."""
        try:
            assert model is not None, f"no model version for {what}"
            generator = ctx.workload.load(ctx.registry.verified_path(model), threads=1)
        except Exception as exc:
            self.audit.append(
                agent="deployer",
                action="serve",
                outcome="failed",
                reason=f"cannot load {ctx.name} {what}: {exc}; {otherwise}",
                figures={"line": ctx.name, "version": model.version if model else None},
                policy_version=ctx.policy.version,
                line=ctx.name,
                key=key,
            )
            return None
        return ServedModel(
            model_id=f"{ctx.name}:v{model.version}",
            version=model.version,
            generator=generator,
            line=ctx.name,
        )

    def _audit_weight(
        self, ctx: LineContext, version: int, before: float, after: float, cycle_id: str
    ) -> None:
        self.audit.append(
            agent="deployer",
            action="canary_weight",
            outcome="taken",
            reason=f"canary {ctx.name}:v{version}: {before:g}% -> {after:g}% of traffic",
            figures={"line": ctx.name, "version": version, "from_pct": before, "to_pct": after},
            cycle_id=cycle_id,  # the rollout's own story: the console draws it by cycle
            policy_version=ctx.policy.version,
            line=ctx.name,
        )
        self._say(f"[deployer] canary {ctx.name}:v{version} takes {after:g}% of traffic")

    def book_served_tokens(self) -> None:
        """Tokens served since the last call go on the ledger, per line and model version
        (a line removed since included: its last tokens are its own)."""
        with self._tokens_lock:
            for (line, version), m in self.server.metrics().items():
                total = int(m.get("prompt_tokens", 0) + m.get("completion_tokens", 0))
                delta = total - self._served_tokens.get((line, version), 0)
                if delta <= 0:
                    continue
                self.ledger.record(
                    key=f"serve:{os.getpid()}:{self._run}:{line}:{version}:{total}",
                    policy_name=line,
                    kind="serve",
                    tokens=delta,
                    joules=0.0,
                    method="unmetered",
                    model_version=version,
                )
                self._served_tokens[(line, version)] = total
