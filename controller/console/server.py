"""Start the operator console beside the daemon: its own port, its own connections to the
store (an operator's action is nobody's term: a follower's console acts too, as the CLI
does), the operators' tokens, and the serving server for live figures."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.http_thread import HttpThread, is_loopback
from adapters.serving_guard import RequestGuard
from adapters.store.db import Store
from controller.console.app import ConsoleDeps, build_console_app
from controller.console.guard import Gate
from controller.console.tokens import TokenSource
from controller.operator_actions import OperatorActions
from controller.queries import Queries
from controller.settings import Settings

_MAX_BODY_BYTES = 65_536


@dataclass
class RunningConsole:
    http: HttpThread
    store: Store
    tokens: TokenSource
    gate: Gate

    @property
    def url(self) -> str:
        return self.http.url + "/"

    def stop(self) -> str | None:
        problem = self.http.stop()
        self.gate.close()  # refusals still held are written before the store goes
        self.store.dispose()
        return problem


def plotly_js() -> Path | None:
    """Plotly.js as the plotly package ships it: the dashboard needs no internet."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def start_console(settings: Settings, serving: Any, say: Callable[[str], None]) -> RunningConsole:
    """Bind and serve; raises TokenError or HttpThreadError with the operator's words."""
    cfg = settings.console
    tokens = TokenSource(cfg.tokens_env, os.environ.get(cfg.tokens_env), settings.state_dir)
    idle = settings.lease.ttl_s / 2 if settings.shared else None
    store = Store(settings.resolved_db_url, None, idle)
    try:
        queries = Queries(
            store,
            settings.state_dir / "models",
            stale_s=settings.runtime.status_stale_s,
            member_stale_s=settings.lease.ttl_s,
        )
        gate = Gate(tokens, is_loopback(cfg.host), queries.audit.append, say)
        deps = ConsoleDeps(
            queries, OperatorActions(queries.registry, queries.audit), gate, serving, plotly_js()
        )
        # an operator's request is a reason and an id: a large body is refused unread (413)
        app = RequestGuard(build_console_app(deps), max_body_bytes=_MAX_BODY_BYTES)
        http = HttpThread(app, cfg.host, cfg.port, "console")
        http.start()
    except Exception:
        store.dispose()
        raise
    return RunningConsole(http, store, tokens, gate)


def open_console(
    settings: Settings, serving: Any, say: Callable[[str], None]
) -> RunningConsole | None:
    """The daemon's console, announced with where the tokens are. None when not asked for,
    or when its port is taken (said: the daemon runs on without one, as a second daemon on
    a host would). Unusable tokens raise TokenError: starting with them would be worse."""
    from adapters.http_thread import HttpThreadError

    if not settings.console.enabled:
        return None
    try:
        console = start_console(settings, serving, say)
    except HttpThreadError as exc:
        say(f"[console] {exc}; running without a console (set --console-port)")
        return None
    tokens = console.tokens.tokens
    names = ", ".join(name for name, _ in tokens.names)
    reads = "open on loopback" if is_loopback(settings.console.host) else "need a token"
    say(
        f"[console] {console.url} (reads {reads}; actions need a token of {names} "
        f"from {tokens.source})"
    )
    return console
