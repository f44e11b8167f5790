"""Who may use the console: a bearer token names the operator; a request without one is
refused with 401 and the refusal is written to the audit log (``refusals``: a flood is
summed, not copied).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from controller.console.refusals import MAX_EVENTS_PER_GAP, REFUSAL_GAP_S, RefusalLog
from controller.console.tokens import TokenSource


class ConsoleError(Exception):
    """An answer other than 2xx: its status, a stable code, and words for a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Gate:
    """Checks tokens; refusals go to its ``RefusalLog``. ``reads_open``: GETs need no
    token (the console listens on loopback only); writes always need one."""

    def __init__(
        self,
        tokens: TokenSource,
        reads_open: bool,
        audit: Callable[..., Any],
        say: Callable[[str], None],
        refusal_gap_s: float = REFUSAL_GAP_S,
        max_events_per_gap: int = MAX_EVENTS_PER_GAP,
    ) -> None:
        self.tokens, self.reads_open = tokens, reads_open
        self._audit, self._say = audit, say
        self.refusals = RefusalLog(audit, say, refusal_gap_s, max_events_per_gap)

    def operator(self, authorization: str | None, method: str, path: str, client: str) -> str:
        """The name behind the token; else 401, recorded."""
        problem = self.tokens.problem
        name = self.tokens.current().who(authorization)
        if self.tokens.problem and self.tokens.problem != problem:
            self._tokens_unusable(self.tokens.problem)
        if name is not None:
            return name
        why = "no bearer token" if not authorization else "a token that is not known"
        self.refusals.refused(method, path, client, why)
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

    def close(self) -> None:
        """Write the refusals still held: a stopping console loses none."""
        self.refusals.close()
