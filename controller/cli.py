"""The `aifactory` command: run the daemon, check policies, read the audit log and registry."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rich.console import Console
from rich.table import Table
from rich.text import Text

from controller.settings import Settings
from controller.traffic_cli import add_traffic_parser
from policies.loader import PolicyError, load_policy
from policies.model import policy_json_schema


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    names = ("state_dir", "db_url", "policy", "factory", "port", "host", "tick_s", "threads")
    for name in (*names, "artefacts"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "no_serve", False):
        overrides["serve"] = False
    if getattr(args, "policy", None) is not None and getattr(args, "factory", None) is None:
        overrides["factory"] = None  # an explicit --policy wins over AIFACTORY_FACTORY
    return Settings(**overrides)


def _common(p: argparse.ArgumentParser, line: bool = True) -> None:
    p.add_argument("--state-dir", type=Path, help="state directory (AIFACTORY_STATE_DIR)")
    p.add_argument("--db", dest="db_url", help="database URL (AIFACTORY_DB_URL)")
    p.add_argument("--policy", type=Path, help="policy file (AIFACTORY_POLICY)")
    if line:
        p.add_argument("--line", help="the production line meant (a factory runs several)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aifactory", description="A self-optimising controller daemon for AI factories."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run(sub)
    _add_policy(sub)
    _add_reads(sub)
    _add_writes(sub)
    return parser


def _add_run(sub: Any) -> None:
    """`aifactory run`: the daemon and its flags."""
    run = sub.add_parser("run", help="start the daemon")
    _common(run, line=False)
    run.add_argument(
        "--factory", type=Path, help="factory file: many lines in one daemon (AIFACTORY_FACTORY)"
    )
    group = run.add_mutually_exclusive_group()
    group.add_argument("--once", action="store_true", help="run one cycle and exit")
    group.add_argument("--cycles", type=int, help="exit after N cycles")
    run.add_argument("--port", type=int, help="serving port (AIFACTORY_PORT)")
    run.add_argument("--host", help="serving address")
    run.add_argument("--no-serve", action="store_true", help="do not start the HTTP server")
    run.add_argument("--tick-s", dest="tick_s", type=float, help="watch tick interval")
    run.add_argument("--threads", type=int, help="torch threads per trial")
    run.add_argument(
        "--artefacts",
        help="where every member reads artefacts: db, none or file:///dir (AIFACTORY_ARTEFACTS)",
    )


def _add_policy(sub: Any) -> None:
    pol = sub.add_parser("policy", help="check a policy or print its schema")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    check = pol_sub.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path)
    pol_sub.add_parser("schema", help="print the policy JSON Schema")


def _add_reads(sub: Any) -> None:
    """Commands that read the store: audit, status, models, report."""
    audit = sub.add_parser("audit", help="list audit events, or `audit verify`")
    _common(audit)
    audit.add_argument("verb", nargs="?", choices=["verify"], help="verify the hash chain")
    audit.add_argument("--agent")
    audit.add_argument("--cycle")
    audit.add_argument("--since", help="ISO time, e.g. 2026-11-26T10:00")
    audit.add_argument("--limit", type=_positive_int, help="only the latest N events")
    audit.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="champion, last cycle, budgets, next run")
    _common(status)
    status.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="list model versions, or `models show V`")
    _common(models)
    models.add_argument("verb", nargs="?", choices=["show"])
    models.add_argument("version", nargs="?", type=int)
    models.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="tokens, joules and tokens/J per cycle, day or model")
    _common(report)
    report.add_argument(
        "--by",
        choices=["cycle", "day", "model", "line"],
        default="cycle",
        help="line: the chargeback, per line and per owner, summing to the factory's totals",
    )
    report.add_argument("--json", action="store_true")
    report.add_argument("--csv", type=Path, help="write CSV to this file ('-' for stdout)")


def _add_writes(sub: Any) -> None:
    """Operator actions, feedback and demo traffic."""
    rollback = sub.add_parser("rollback", help="restore the previous champion (or --to V)")
    _common(rollback)
    rollback.add_argument("--to", type=int)
    rollback.add_argument("--reason", default="operator rollback")

    rollout = sub.add_parser(
        "rollout", help="show the canary rollout, or `rollout continue|abort --reason ...`"
    )
    _common(rollout)
    rollout.add_argument("action", nargs="?", choices=("show", "continue", "abort"), default="show")
    rollout.add_argument("--reason", default="")
    rollout.add_argument("--by", default=None, help="who decides (default: current user)")
    rollout.add_argument("--json", action="store_true")

    feedback = sub.add_parser("feedback", help="clients' ratings of answers, per version")
    _common(feedback)
    feedback.add_argument("--limit", type=_positive_int, default=20, help="newest N ratings")
    feedback.add_argument("--json", action="store_true", help="export as JSON")

    add_traffic_parser(sub, _common)

    for verb in ("approve", "reject"):
        p = sub.add_parser(verb, help=f"{verb} a promotion waiting for a person")
        _common(p)
        p.add_argument("id", type=int)
        p.add_argument("--reason", default="", required=verb == "reject")
        p.add_argument("--by", default=None, help="who decides (default: current user)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: do not squeeze tables to 80 columns
    if args.command == "policy":
        return _policy(args, console)
    settings = _settings(args)
    if args.command == "run":
        from controller.runner import FactoryRunner

        cycles = 1 if args.once else args.cycles
        return FactoryRunner(settings, console).run(cycles=cycles)
    args.stale_s = settings.runtime.status_stale_s
    args.member_stale_s = settings.lease.ttl_s  # members beat every renewal
    return _offline(args, settings, console)


def _policy(args: argparse.Namespace, console: Console) -> int:
    if args.policy_command == "schema":
        print(json.dumps(policy_json_schema(), indent=2))
        return 0
    from policies.factory import is_factory_file

    if is_factory_file(args.file):
        return _factory_check(args.file, console)
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    console.print(
        f"{args.file}: OK (policy {policy.name}, version {policy.version})",
        highlight=False,
        markup=False,
    )
    return 0


def _factory_check(path: Path, console: Console) -> int:
    """`policy check` on a factory file: the factory and every line, or every problem."""
    from policies.factory import FactoryError, load_factory

    try:
        factory = load_factory(path)
    except FactoryError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    console.print(
        f"{path}: OK (factory {factory.name}, version {factory.spec.version}, "
        f"{len(factory.lines)} lines)",
        highlight=False,
        markup=False,
    )
    for line in factory.lines:
        s = line.spec
        console.print(
            f"  {line.name}: owner {s.owner}, priority {s.priority}, guarantee "
            f"{s.guarantee_pct:g}%, weight {s.weight:g}, {line.path} "
            f"(policy version {line.policy.version})",
            highlight=False,
            markup=False,
        )
    return 0


def _offline(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    """Commands that read or edit the store directly, with or without a running daemon."""
    from adapters.store.audit import AuditLog
    from adapters.store.cycles import CycleBook
    from adapters.store.db import Store
    from adapters.store.registry import ModelRegistry

    store = Store(settings.resolved_db_url)
    store.create_all()
    audit = AuditLog(store)
    book = CycleBook(store)
    registry = ModelRegistry(store, settings.state_dir / "models")
    try:
        if args.command == "audit":
            return _audit(args, audit, console)
        if args.command == "feedback":  # every line unless one is named
            from controller.feedback_view import read_feedback, show_feedback

            return show_feedback(read_feedback(store, args.line, args.limit), console, args.json)
        if args.command == "report" and args.by == "line":
            return _chargeback(args, store, book, console)
        if args.command in ("approve", "reject"):  # an approval id names its line
            return _decide(args, book, audit, console)
        if args.command == "status" and not args.line and len(book.policy_names()) > 1:
            return _status_all(args, store, book, registry, console)
        name = _policy_name(settings, book, args.line, explicit=args.policy is not None)
        if args.command == "traffic":
            from controller.traffic_cli import run_traffic

            state = book.daemon_state(name)
            return run_traffic(args, name, args.url or (state and state.serving_url), console)
        if args.command == "status":
            return _status(args, name, store, book, registry, console)
        if args.command == "models":
            return _models(args, name, registry, console)
        if args.command == "report":
            return _report(args, name, store, registry, console)
        if args.command == "rollback":
            return _rollback(args, name, registry, audit, console)
        if args.command == "rollout":
            return _rollout(args, name, store, audit, console)
    finally:
        store.dispose()
    return 1


def _policy_name(
    settings: Settings, book: Any, line: str | None = None, explicit: bool = False
) -> str:
    """The production line meant: --line; else the policy file's name, when the file was
    named or the store holds no other line; else the only line in the store. Never a guess
    between several lines: a rollback of the wrong line is worse than a question."""
    names = book.policy_names()
    if line:
        if line not in names:
            raise SystemExit(
                f"no production line {line!r} in the store (lines: {', '.join(names) or 'none'})"
            )
        return line
    try:
        name = load_policy(settings.policy).name
    except PolicyError as exc:
        if len(names) == 1:
            return str(names[0])
        raise SystemExit(
            f"cannot tell which production line is meant: {settings.policy} is unusable "
            f"({exc.problems[0] if exc.problems else exc}) and the store holds "
            f"{', '.join(names) or 'none'}; pass --line NAME"
        ) from exc
    if explicit or not (set(names) - {name}):
        return name
    raise SystemExit(
        f"the store holds several production lines ({', '.join(names)}); pass --line NAME"
    )


def _daemon_alive(pid: int, heartbeat_at: str, stale_s: float = 120.0) -> bool:
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


def _audit(args: argparse.Namespace, audit: Any, console: Console) -> int:
    if args.verb == "verify":
        report = audit.verify()
        if report.ok:
            console.print(
                f"audit chain OK: {report.events} events verified", highlight=False, markup=False
            )
            return 0
        console.print(
            f"audit chain BROKEN at event {report.first_bad_seq}: {report.problem}",
            highlight=False,
            markup=False,
        )
        return 1
    events = audit.events(
        agent=args.agent, cycle_id=args.cycle, since=args.since, limit=args.limit, line=args.line
    )
    if args.json:
        for e in events:
            print(json.dumps(e.__dict__, sort_keys=True))
        return 0
    table = Table(title=f"audit log ({len(events)} events)")
    for col in ("seq", "time", "line", "cycle", "agent", "action", "outcome", "reason"):
        table.add_column(col, overflow="fold")
    for e in events:
        cells = (
            str(e.seq),
            e.ts[:19],
            e.line or "-",
            e.cycle_id or "-",
            e.agent,
            e.action,
            e.outcome,
            e.reason,
        )
        table.add_row(*(Text(c) for c in cells))  # Text: stored strings are never markup
    console.print(table)
    return 0


def _status(
    args: argparse.Namespace, name: str, store: Any, book: Any, registry: Any, console: Console
) -> int:
    from controller.members_view import print_members, read_members

    out = _status_data(args, name, store, book, registry)
    members = read_members(store, args.member_stale_s)
    if args.json:
        print(json.dumps(out | ({"members": members} if members else {}), indent=2, default=str))
        return 0
    _print_status(out, console)
    if members:
        print_members(members, console)
    return 0


def _status_data(
    args: argparse.Namespace, name: str, store: Any, book: Any, registry: Any
) -> dict[str, Any]:
    """One line's status: champion, last cycle, budgets of the policy version it runs."""
    from adapters.store.ledger import Ledger, today_utc
    from policies.model import Policy

    ledger = Ledger(store)
    champion_v = registry.alias(name, "champion")
    champ = registry.get(name, champion_v) if champion_v else None
    last = next(iter(book.recent(name, 1)), None)
    state = book.daemon_state(name)
    day = ledger.totals(name, day=today_utc())
    policy: Policy | None = book.policy(state.policy_version) if state else None
    if policy is None:  # no daemon has run this line yet: the file is all there is
        try:
            policy = load_policy(args.policy) if args.policy else None
        except PolicyError:
            policy = None
    budgets = policy.budgets if policy else None
    out = {
        "policy": name,
        "champion": None
        if champ is None
        else {
            "version": champ.version,
            "valid_bpb": champ.valid_bpb,
            "recent_bpb": champ.evaluation.get("candidate_recent_bpb"),
            "created_at": champ.created_at,
        },
        "previous": registry.alias(name, "previous"),
        "last_cycle": None
        if last is None
        else {
            "id": last.id,
            "status": last.status,
            "trigger": last.trigger,
            "started_at": last.started_at,
            "finished_at": last.finished_at,
        },
        "today": {
            "tokens": day.tokens,
            "joules": round(day.joules, 1),
            "energy_method": day.method,
            "training_tokens_budget": budgets.training_tokens_per_day if budgets else None,
            "energy_kwh_budget": budgets.energy_kwh_per_day if budgets else None,
        },
        "daemon": None
        if state is None
        else {
            "running": _daemon_alive(state.pid, state.heartbeat_at, args.stale_s),
            "pid": state.pid,
            "heartbeat_at": state.heartbeat_at,
            "next_cycle_at": state.next_cycle_at,
            "serving_url": state.serving_url,
            "served_version": state.served_version,
            "energy": state.energy_source,
            "telemetry": json.loads(state.telemetry or "{}"),
            "cluster": json.loads(state.cluster or "{}"),
        },
        "pending_approvals": [
            {"id": a.id, "cycle": a.cycle_id, "version": a.version}
            for a in book.approvals(name, "pending")
        ],
        "rollout": _active_rollout(store, name),
    }
    return out


def _print_status(out: dict[str, Any], console: Console) -> None:
    name = out["policy"]
    c = out["champion"]
    console.print(f"[bold]{name}[/bold]")
    console.print(
        f"  champion:    {'v' + str(c['version']) if c else 'none'}"
        + (f"  (recent {c['recent_bpb']:.4f} bits/byte)" if c and c["recent_bpb"] else ""),
        highlight=False,
        markup=False,
    )
    ro = out["rollout"]
    if ro:
        console.print(
            f"  canary:      v{ro['challenger']} at {ro['weight_pct']:g}% (step {ro['step']}), "
            f"{ro['status']}" + (f": {ro['reason']}" if ro["status"] == "paused" else ""),
            highlight=False,
            markup=False,
        )
    lc = out["last_cycle"]
    console.print(
        f"  last cycle:  {lc['id'] + ' ' + lc['status'] if lc else 'none'}",
        highlight=False,
        markup=False,
    )
    t = out["today"]
    console.print(
        f"  today:       {t['tokens']:,} tokens, {t['joules']:,.0f} J ({t['energy_method']})",
        highlight=False,
        markup=False,
    )
    d = out["daemon"]
    if d and not d["running"]:
        console.print(
            f"  daemon:      not running (last heartbeat {d['heartbeat_at'] or 'never'})",
            highlight=False,
            markup=False,
        )
    elif d:
        serving = (
            f"serving v{d['served_version']} at {d['serving_url']}/v1"
            if d["serving_url"]
            else "not serving"
        )
        console.print(
            f"  daemon:      pid {d['pid']}, heartbeat {d['heartbeat_at']}, {serving}",
            highlight=False,
            markup=False,
        )
        t = d["telemetry"]
        if t:
            console.print(
                f"  telemetry:   load {t['load_1m']} on {t['cpu_count']} cores, daemon CPU "
                f"{t['daemon_cpu_pct']}%, host power {t['host_power_w']} W ({t['method']})",
                highlight=False,
                markup=False,
            )
        console.print(
            f"  next cycle:  {d['next_cycle_at'] or 'on new data / not scheduled'}",
            highlight=False,
            markup=False,
        )
        for text in _cluster_lines(d["cluster"]):
            console.print(text, highlight=False, markup=False)
    for a in out["pending_approvals"]:
        console.print(
            f"  approval {a['id']}: v{a['version']} from {a['cycle']} is waiting",
            highlight=False,
            markup=False,
        )


def _cluster_lines(view: dict[str, Any]) -> list[str]:
    """Where trials run: the cluster, its nodes with their resources, trials running where."""
    if not view:
        return []
    head = f"  cluster:     {view.get('kind', '?')}"
    if view.get("address"):
        head += f" at {view['address']}"
    if "slots" in view:
        head += f", {view.get('slots_in_use', 0)}/{view['slots']} slot(s) in use"
    out = [head]
    for n in view.get("nodes", []):
        res = ", ".join(
            f"{k} {v:g}"
            for k, v in sorted((n.get("resources") or {}).items())
            if k not in ("memory", "object_store_memory")
        )
        state = "alive" if n.get("alive") else "dead"
        out.append(f"    node {n.get('node')}: {state}" + (f" ({res})" if res else ""))
    for key, where in sorted((view.get("running") or {}).items()):
        out.append(f"    trial {key}: " + (where if where.startswith("waiting") else f"on {where}"))
    return out


def _status_all(
    args: argparse.Namespace, store: Any, book: Any, registry: Any, console: Console
) -> int:
    """A factory: every line's status, one after another (JSON: a list under "lines")."""
    names = book.policy_names()
    from controller.members_view import print_members, read_members

    outs = [_status_data(args, name, store, book, registry) for name in names]
    members = read_members(store, args.member_stale_s)
    if args.json:
        print(json.dumps({"lines": outs, "members": members}, indent=2, default=str))
        return 0
    for out in outs:
        _print_status(out, console)
    if members:
        print_members(members, console)
    return 0


def _chargeback(args: argparse.Namespace, store: Any, book: Any, console: Console) -> int:
    """Tokens and joules per line and per owner, summing to the factory's totals."""
    from adapters.store.ledger import Ledger
    from controller.report import build_chargeback

    owners = {}
    for name in book.policy_names():
        state = book.daemon_state(name)
        if state is not None and state.owner:
            owners[name] = state.owner
    charge = build_chargeback(Ledger(store).all_rows(), owners)
    if args.csv is not None:
        text = charge.to_csv()
        if str(args.csv) == "-":
            sys.stdout.write(text)
        else:
            args.csv.write_text(text)
        return 0
    if args.json:
        print(json.dumps(charge.as_dict(), indent=2))
        return 0
    table = Table(title="chargeback: ledger by line and owner")
    for col in ("line", "owner", "trained", "evaluated", "served", "joules"):
        table.add_column(col, justify="left" if col in ("line", "owner") else "right")
    rows = [(r.key, charge.owner_of[r.key], r) for r in charge.lines]
    rows += [("(all lines)", r.key, r) for r in charge.owners]
    rows.append(("(factory)", "", charge.total))
    for line, owner, r in rows:
        table.add_row(
            Text(line),
            Text(owner),
            f"{r.train_tokens:,}",
            f"{r.eval_tokens:,}",
            f"{r.serve_tokens:,}",
            f"{r.joules:,.0f} ({r.energy_label})" if r.joules else "-",
        )
    console.print(table)
    return 0


def _models(args: argparse.Namespace, name: str, registry: Any, console: Console) -> int:
    aliases = registry.aliases(name)
    by_version: dict[int, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(v, []).append(alias)
    if args.verb == "show":
        if args.version is None:
            console.print("usage: aifactory models show VERSION")
            return 2
        m = registry.get(name, args.version)
        if m is None:
            console.print(f"no model version {args.version}")
            return 1
        history = [
            {
                "alias": h.alias,
                "from": h.from_version,
                "to": h.to_version,
                "at": h.at,
                "by": h.by,
                "reason": h.reason,
            }
            for h in registry.alias_history(name)
            if m.version in (h.from_version, h.to_version)
        ]
        data = dict(m.__dict__) | {
            "aliases": by_version.get(m.version, []),
            "alias_history": history,
        }
        print(json.dumps(data, indent=2, default=str))
        return 0
    versions = registry.versions(name)
    if args.json:
        print(json.dumps([m.__dict__ for m in versions], default=str))
        return 0
    table = Table(title=f"model versions: {name}")
    for col in (
        "version",
        "aliases",
        "status",
        "cycle",
        "dataset",
        "valid bpb",
        "tokens",
        "joules",
        "created",
    ):
        table.add_column(col)
    for m in versions:
        cells = (
            f"v{m.version}",
            ",".join(by_version.get(m.version, [])),
            m.status,
            m.cycle_id,
            m.dataset_version[:10],
            f"{m.valid_bpb:.4f}" if m.valid_bpb else "-",
            f"{m.tokens:,}",
            f"{m.joules:,.0f} ({m.energy_method})",
            m.created_at[:19],
        )
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
    return 0


def _report(
    args: argparse.Namespace, name: str, store: Any, registry: Any, console: Console
) -> int:
    from adapters.store.ledger import Ledger
    from controller.report import build_report, to_csv

    cycle_models = {m.cycle_id: m.version for m in registry.versions(name)}
    rows = build_report(Ledger(store).rows(name), args.by, cycle_models)
    if args.csv is not None:
        text = to_csv(rows)
        if str(args.csv) == "-":
            sys.stdout.write(text)
        else:
            args.csv.write_text(text)
            console.print(f"wrote {len(rows)} rows to {args.csv}", highlight=False, markup=False)
        return 0
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    table = Table(title=f"ledger by {args.by}: {name}")
    for col in ("", "trained", "evaluated", "served", "joules", "tokens/J (training)"):
        table.add_column(col, justify="right" if col else "left")
    for r in rows:
        tpj = r.train_tokens_per_joule
        table.add_row(
            Text(r.key),
            f"{r.train_tokens:,}",
            f"{r.eval_tokens:,}",
            f"{r.serve_tokens:,}",
            f"{r.joules:,.0f} ({r.energy_label})" if r.joules else "-",
            f"{tpj:,.0f} ({r.energy_label})" if tpj else "-",
        )
    console.print(table)
    return 0


def _rollback(
    args: argparse.Namespace, name: str, registry: Any, audit: Any, console: Console
) -> int:
    who = getpass.getuser()
    current = registry.alias(name, "champion")
    try:
        if args.to is not None and args.to == current:
            raise LookupError(f"v{current} is already the champion")
        before, after = registry.rollback(name, to=args.to, by=who, reason=args.reason)
    except (LookupError, KeyError) as exc:
        why = exc.args[0] if exc.args else str(exc)
        audit.append(
            agent="operator",
            action="rollback",
            outcome="refused",
            reason=f"{who}: {why}",
            figures={"to": args.to, "champion": current},
        )
        console.print(f"rollback refused: {why}", highlight=False, markup=False)
        return 1
    audit.append(
        agent="operator",
        action="rollback",
        outcome="taken",
        reason=f"{who}: champion v{before} -> v{after}: {args.reason}",
        figures={"from": before, "to": after, "by": who},
    )
    console.print(
        f"champion is now v{after} (was v{before}); a running daemon switches "
        "serving within one tick",
        highlight=False,
        markup=False,
    )
    return 0


def _active_rollout(store: Any, name: str) -> dict[str, Any] | None:
    from adapters.store.rollouts import RolloutBook

    row = RolloutBook(store).active(name)
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


def _decide(args: argparse.Namespace, book: Any, audit: Any, console: Console) -> int:
    who = args.by or getpass.getuser()
    approved = args.command == "approve"
    try:
        row = book.decide_approval(args.id, approved, who, args.reason)
    except (KeyError, ValueError) as exc:
        console.print(exc.args[0] if exc.args else str(exc), highlight=False, markup=False)
        return 1
    audit.append(
        agent="operator",
        action=args.command,
        outcome="taken",
        reason=f"{who} {'approved' if approved else 'rejected'} v{row.version}: {args.reason}",
        figures={"approval_id": row.id, "version": row.version},
        cycle_id=row.cycle_id,
    )
    console.print(
        f"approval {row.id} {row.status}; the daemon resumes {row.cycle_id} within one tick",
        highlight=False,
        markup=False,
    )
    return 0


def _rollout(args: argparse.Namespace, name: str, store: Any, audit: Any, console: Console) -> int:
    from adapters.store.rollouts import RolloutBook

    book = RolloutBook(store)
    if args.action == "show":
        rows = book.recent(name, 10)
        if args.json:
            print(json.dumps([r.model_dump() for r in rows], indent=2, default=str))
            return 0
        if not rows:
            console.print(f"{name}: no rollouts yet", highlight=False, markup=False)
            return 0
        table = Table(title=f"{name}: canary rollouts")
        for col_name in ("cycle", "challenger", "champion", "steps", "step", "weight", "status"):
            table.add_column(col_name)
        table.add_column("reason", overflow="fold")
        for r in rows:
            steps = json.loads(r.steps)
            table.add_row(
                r.cycle_id,
                f"v{r.challenger_version}",
                f"v{r.champion_version}" if r.champion_version else "-",
                ", ".join(f"{w:g}%" for w in steps),
                f"{r.step + 1}/{len(steps)}",
                f"{r.weight_pct:g}%",
                r.status + (f" ({r.decision} asked)" if r.decision else ""),
                Text(r.reason),
            )
        console.print(table)
        return 0
    who = args.by or getpass.getuser()
    if not args.reason:
        console.print("give --reason: it goes into the audit log", highlight=False, markup=False)
        return 2
    try:
        row = book.decide(name, args.action, who, args.reason)
    except (LookupError, ValueError) as exc:
        console.print(exc.args[0] if exc.args else str(exc), highlight=False, markup=False)
        return 1
    audit.append(
        agent="operator",
        action=f"rollout_{args.action}",
        outcome="taken",
        reason=f"{who}: {args.action} the rollout of v{row.challenger_version}: {args.reason}",
        figures={"version": row.challenger_version, "step": row.step, "by": who},
        cycle_id=row.cycle_id,
    )
    console.print(
        f"rollout of v{row.challenger_version}: {args.action} recorded; the daemon acts on it "
        "within one tick",
        highlight=False,
        markup=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
