"""Who may use the console: a bearer token names the operator; a request without one is
refused with 401 and the refusal is written to the audit log (a flood of them is summed,
not copied: at most one event per client every few seconds, with the count it stands for).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from controller.console.tokens import TokenSource

_REFUSAL_GAP_S = 5.0


class ConsoleError(Exception):
    """An answer other than 2xx: its status, a stable code, and words for a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_MAX_CLIENTS = 1024


class Gate:
    """Checks tokens and records refusals. ``reads_open``: GETs need no token (the console
    listens on loopback only); writes always need one."""

    def __init__(
        self,
        tokens: TokenSource,
        reads_open: bool,
        audit: Callable[..., Any],
        say: Callable[[str], None],
    ) -> None:
        self.tokens, self.reads_open = tokens, reads_open
        self._audit, self._say = audit, say
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # client -> when its last refusal was written
        self._held: dict[str, int] = {}  # client -> refusals since then, not yet written

    def operator(self, authorization: str | None, method: str, path: str, client: str) -> str:
        """The name behind the token; else 401, recorded."""
        problem = self.tokens.problem
        name = self.tokens.current().who(authorization)
        if self.tokens.problem and self.tokens.problem != problem:
            self._tokens_unusable(self.tokens.problem)
        if name is not None:
            return name
        why = "no bearer token" if not authorization else "a token that is not known"
        self._refused(method, path, client, why)
        raise ConsoleError(
            401,
            "unauthorized",
            f"{method} {path} needs an operator's token (Authorization: Bearer TOKEN); "
            f"the request had {why}",
        )

    def _tokens_unusable(self, problem: str) -> None:
        reason = f"every token refused until the tokens are fixed: {problem}"
        self._say(f"[console] {reason}")
        with contextlib.suppress(Exception):  # said either way
            self._audit(agent="console", action="tokens_unusable", outcome="failed", reason=reason)

    def _refused(self, method: str, path: str, client: str, why: str) -> None:
        now = time.monotonic()
        path = path.encode("unicode_escape").decode("ascii")[:200]  # a NUL is text here
        with self._lock:
            self._forget_quiet(now)
            held = self._held.get(client, 0) + 1
            if now - self._last.get(client, -1e9) < _REFUSAL_GAP_S:
                self._held[client] = held
                return
            self._last[client], self._held[client] = now, 0
        reason = f"{method} {path} from {client} refused: {why}"
        if held > 1:
            reason += f" ({held} refusals from this client since the last event)"
        self._say(f"[console] {reason}")
        try:  # a refusal is answered whatever the store says
            self._audit(
                agent="console",
                action="unauthorized",
                outcome="refused",
                reason=reason,
                figures={"method": method, "path": path, "client": client, "count": held},
            )
        except Exception as exc:
            self._say(f"[console] could not audit a refusal: {type(exc).__name__}: {exc}")

    def _forget_quiet(self, now: float) -> None:
        """Clients quiet for longer than the gap are forgotten (with the few refusals they
        held since their last event), so a scan from many addresses cannot grow the maps."""
        if len(self._last) < _MAX_CLIENTS:
            return
        for client in [c for c, t in self._last.items() if now - t >= _REFUSAL_GAP_S]:
            self._last.pop(client, None)
            self._held.pop(client, None)
