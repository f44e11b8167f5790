"""The `aifactory` command: run the daemon, check policies, read the audit log and registry."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
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
    console = {
        key: value
        for key, value in (
            ("port", getattr(args, "console_port", None)),
            ("host", getattr(args, "console_host", None)),
            ("enabled", False if getattr(args, "no_console", False) else None),
        )
        if value is not None
    }
    if console:
        overrides["console"] = console
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
    run.add_argument(
        "--console-port", type=int, help="operator console port (AIFACTORY_CONSOLE__PORT)"
    )
    run.add_argument("--console-host", help="operator console address")
    run.add_argument("--no-console", action="store_true", help="do not serve the console")
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
    audit.add_argument("--action", help="only events of this action, e.g. approve")
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

    for verb, what in (("pause", "start no new cycle on"), ("resume", "lift the pause of")):
        p = sub.add_parser(verb, help=f"{what} a line (serving goes on)")
        _common(p)
        p.add_argument("--reason", required=True, help="goes into the audit log")
        p.add_argument("--by", default=None, help="who decides (default: current user)")

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
    from adapters.store.db import Store
    from controller.operator_actions import OperatorActions
    from controller.queries import Queries

    if args.command == "pause" and settings.db_url is None:  # a line paused before its start
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.resolved_db_url)
    store.create_all()
    q = Queries(
        store,
        settings.state_dir / "models",
        stale_s=settings.runtime.status_stale_s,
        member_stale_s=settings.lease.ttl_s,  # members beat every renewal
        policy_path=args.policy,
    )
    actions = OperatorActions(q.registry, q.audit)
    try:
        return _dispatch(args, settings, q, actions, console)
    finally:
        store.dispose()


def _dispatch(
    args: argparse.Namespace, settings: Settings, q: Any, actions: Any, console: Console
) -> int:
    if args.command == "audit":
        return _audit(args, q, console)
    if args.command == "feedback":  # every line unless one is named
        from controller.feedback_view import read_feedback, show_feedback

        return show_feedback(read_feedback(q.store, args.line, args.limit), console, args.json)
    if args.command == "report" and args.by == "line":
        return _chargeback(args, q, console)
    if args.command in ("approve", "reject"):  # an approval id names its line
        return _decide(args, actions, console)
    if args.command == "status" and not args.line and len(q.lines()) > 1:
        return _status_all(args, q, console)
    name = _policy_name(settings, q.book, args.line, explicit=args.policy is not None)
    if args.command == "traffic":
        from controller.traffic_cli import run_traffic

        state = q.book.daemon_state(name)
        return run_traffic(args, name, args.url or (state and state.serving_url), console)
    handlers = {
        "status": lambda: _status(args, name, q, console),
        "models": lambda: _models(args, name, q, console),
        "report": lambda: _report(args, name, q, console),
        "rollback": lambda: _act(
            console, lambda: actions.rollback(name, args.to, _who(args), args.reason)
        ),
        "rollout": lambda: _rollout(args, name, q, actions, console),
        "pause": lambda: _pause(args, name, actions, console),
        "resume": lambda: _pause(args, name, actions, console),
    }
    handler = handlers.get(args.command)
    return handler() if handler is not None else 1


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


def _audit(args: argparse.Namespace, q: Any, console: Console) -> int:
    if args.verb == "verify":
        report = q.verify()
        if report["ok"]:
            console.print(
                f"audit chain OK: {report['events']} events verified",
                highlight=False,
                markup=False,
            )
            return 0
        console.print(
            f"audit chain BROKEN at event {report['first_bad_seq']}: {report['problem']}",
            highlight=False,
            markup=False,
        )
        return 1
    events = q.audit_events(
        agent=args.agent,
        cycle_id=args.cycle,
        since=args.since,
        limit=args.limit,
        line=args.line,
        action=args.action,
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


def _status(args: argparse.Namespace, name: str, q: Any, console: Console) -> int:
    from controller.members_view import print_members, read_members

    out = q.line_status(name)
    members = read_members(q.store, q.member_stale_s)
    if args.json:
        print(json.dumps(out | ({"members": members} if members else {}), indent=2, default=str))
        return 0
    _print_status(out, console)
    if members:
        print_members(members, console)
    return 0


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
    paused = out.get("paused")
    if paused:
        console.print(
            f"  paused:      by {paused['by']} at {paused['at'][:19]}: {paused['reason']} "
            "(no new cycles; `aifactory resume` lifts it)",
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
        if d.get("console_url"):
            console.print(f"  console:     {d['console_url']}", highlight=False, markup=False)
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


def _status_all(args: argparse.Namespace, q: Any, console: Console) -> int:
    """A factory: every line's status, one after another (JSON: a list under "lines")."""
    from controller.members_view import print_members

    view = q.factory()
    if args.json:
        print(
            json.dumps({"lines": view["lines"], "members": view["members"]}, indent=2, default=str)
        )
        return 0
    for out in view["lines"]:
        _print_status(out, console)
    if view["members"]:
        print_members(view["members"], console)
    return 0


def _chargeback(args: argparse.Namespace, q: Any, console: Console) -> int:
    """Tokens and joules per line and per owner, summing to the factory's totals."""
    charge = q.chargeback()
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


def _models(args: argparse.Namespace, name: str, q: Any, console: Console) -> int:
    if args.verb == "show":
        if args.version is None:
            console.print("usage: aifactory models show VERSION")
            return 2
        model = q.model(name, args.version)
        if model is None:
            console.print(f"no model version {args.version}")
            return 1
        print(json.dumps(model, indent=2, default=str))
        return 0
    versions = q.models(name)
    if args.json:
        print(
            json.dumps(
                [{k: v for k, v in m.items() if k != "aliases"} for m in versions], default=str
            )
        )
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
            f"v{m['version']}",
            ",".join(m["aliases"]),
            m["status"],
            m["cycle_id"],
            m["dataset_version"][:10],
            f"{m['valid_bpb']:.4f}" if m["valid_bpb"] else "-",
            f"{m['tokens']:,}",
            f"{m['joules']:,.0f} ({m['energy_method']})",
            m["created_at"][:19],
        )
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
    return 0


def _report(args: argparse.Namespace, name: str, q: Any, console: Console) -> int:
    from controller.report import ReportRow, to_csv

    rows = q.report(name, args.by)
    if args.csv is not None:
        keep = {f for f in ReportRow.__dataclass_fields__}
        text = to_csv([ReportRow(**{k: v for k, v in r.items() if k in keep}) for r in rows])
        if str(args.csv) == "-":
            sys.stdout.write(text)
        else:
            args.csv.write_text(text)
            console.print(f"wrote {len(rows)} rows to {args.csv}", highlight=False, markup=False)
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"ledger by {args.by}: {name}")
    for col in ("", "trained", "evaluated", "served", "joules", "tokens/J (training)"):
        table.add_column(col, justify="right" if col else "left")
    for r in rows:
        tpj, label = r["train_tokens_per_joule"], r["energy"]
        table.add_row(
            Text(r["key"]),
            f"{r['train_tokens']:,}",
            f"{r['eval_tokens']:,}",
            f"{r['serve_tokens']:,}",
            f"{r['joules']:,.0f} ({label})" if r["joules"] else "-",
            f"{tpj:,.0f} ({label})" if tpj else "-",
        )
    console.print(table)
    return 0


def _who(args: argparse.Namespace) -> str:
    return getattr(args, "by", None) or getpass.getuser()


def _act(console: Console, action: Any) -> int:
    """Run an operator action and say what happened (or why the store refused it)."""
    from controller.operator_actions import ActionRefused

    try:
        done = action()
    except ActionRefused as exc:
        console.print(exc.message, highlight=False, markup=False)
        return 1
    console.print(done.message, highlight=False, markup=False)
    return 0


def _decide(args: argparse.Namespace, actions: Any, console: Console) -> int:
    approved = args.command == "approve"
    return _act(
        console, lambda: actions.decide_approval(args.id, approved, _who(args), args.reason)
    )


def _pause(args: argparse.Namespace, name: str, actions: Any, console: Console) -> int:
    act = actions.pause if args.command == "pause" else actions.resume
    return _act(console, lambda: act(name, _who(args), args.reason))


def _rollout(args: argparse.Namespace, name: str, q: Any, actions: Any, console: Console) -> int:
    if args.action != "show":
        if not args.reason:
            console.print(
                "give --reason: it goes into the audit log", highlight=False, markup=False
            )
            return 2
        return _act(
            console, lambda: actions.decide_rollout(name, args.action, _who(args), args.reason)
        )
    rows = q.rollouts.recent(name, 10)
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


if __name__ == "__main__":
    sys.exit(main())
