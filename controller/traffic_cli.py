"""`aifactory traffic`: send a line demo requests, pieces of standard-library text.

The serving URL is the running daemon's (as the store knows it) unless `--url` is given.
Requests are labelled as demo traffic (`user: aifactory-demo-<n>`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console

from adapters.traffic_client import TrafficClient, stdlib_prompts


def add_traffic_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("traffic", help="send a line demo requests (standard-library text)")
    common(p)
    p.add_argument("--url", help="serving URL (default: the running daemon's)")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second in total")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to send for")
    p.add_argument(
        "--modules", default="json,email", help="standard-library packages to draw prompts from"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=16)
    p.add_argument("--json", action="store_true")


def run_traffic(args: argparse.Namespace, line: str, url: str | None, console: Console) -> int:
    if url is None:
        console.print(
            f"no serving URL for line {line!r}: is the daemon running? (or pass --url)",
            markup=False,
        )
        return 2
    if args.rate <= 0 or args.duration <= 0 or args.workers < 1:
        console.print("--rate, --duration and --workers must be positive", markup=False)
        return 2
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    try:
        prompts = stdlib_prompts(modules)
    except ValueError as exc:
        console.print(str(exc), markup=False)
        return 2
    console.print(
        f"[traffic] {args.rate:g} requests/s to {url} (line {line}) for {args.duration:g} s, "
        f"prompts from {', '.join(modules)}",
        markup=False,
    )
    started = time.monotonic()
    client = TrafficClient(
        url, line, lambda: prompts, args.rate, args.workers, max_tokens=args.max_tokens
    )
    counts = client.run_for(args.duration)
    summary = {
        "line": line,
        "seconds": round(time.monotonic() - started, 1),
        "sent": counts.sent,
        "answered": counts.answered,
        "failed": counts.failed,
        "models": counts.models,
        "last_error": counts.last_error or None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        console.print(
            f"[traffic] {counts.sent} sent, {counts.answered} answered, {counts.failed} failed; "
            + ", ".join(f"{m}: {n}" for m, n in sorted(counts.models.items()))
            + (f"; last error: {counts.last_error}" if counts.last_error else ""),
            markup=False,
        )
    return 0 if counts.failed == 0 else 1
