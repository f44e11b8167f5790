"""Refusals of the console, in the audit log: a flood of them is summed, not copied. At
most one event per client every few seconds, with the count it stands for, and at most a
few events a gap in all, so a scan from many addresses is summed too; a timer writes what
a burst left held even when nothing follows it, and ``close`` writes the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

REFUSAL_GAP_S = 5.0
MAX_EVENTS_PER_GAP = 20  # refusal events a gap across all clients, before summing them
MANY_CLIENTS = "(many clients)"  # the key refusals past that bound are held under
_MAX_CLIENTS = 1024


class RefusalLog:
    """Writes 401s as ``console/unauthorized`` events, summed per client and gap."""

    def __init__(
        self,
        audit: Callable[..., Any],
        say: Callable[[str], None],
        gap_s: float = REFUSAL_GAP_S,
        max_events: int = MAX_EVENTS_PER_GAP,
    ) -> None:
        self._audit, self._say = audit, say
        self._gap, self._max_events = gap_s, max_events
        self._window, self._events = -1e9, 0  # when this gap began, events written in it
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # client -> when its last refusal was written
        self._held: dict[str, int] = {}  # client -> refusals since then, not yet written
        self._latest: dict[str, tuple[str, str, str]] = {}  # client -> the newest of those
        self._timer: threading.Timer | None = None
        self._closed = False

    def refused(self, method: str, path: str, client: str, why: str) -> None:
        now = time.monotonic()
        path = path.encode("unicode_escape").decode("ascii")[:200]  # a NUL is text here
        what = f"{method} {path} from {client} refused: {why}"
        with self._lock:
            self._forget_quiet(now)
            if now - self._last.get(client, -1e9) < self._gap:
                self._hold(client, 1, (method, path, what), now)
                self._flush_later(now)
                return
            if not self._slot(now):
                self._hold(MANY_CLIENTS, 1, (method, path, what), now)
                self._flush_later(now)
                return
            self._last[client] = now
        self._write(what, client, 1, method, path)

    def _slot(self, now: float) -> bool:
        """Whether this gap has room for one more event, taking it. Under the lock."""
        if now - self._window >= self._gap:
            self._window, self._events = now, 0
        if self._events >= self._max_events:
            return False
        self._events += 1
        return True

    def _hold(self, key: str, count: int, latest: tuple[str, str, str], now: float) -> None:
        """Add refusals to those held under ``key``, for the flush. Under the lock. The
        shared key's event waits a whole gap from its first refusal, to sum the scan."""
        if key == MANY_CLIENTS and key not in self._held:
            self._last[key] = now
        self._held[key] = self._held.get(key, 0) + count
        self._latest[key] = latest

    def _write(self, reason: str, client: str, count: int, method: str, path: str) -> None:
        self._say(f"[console] {reason}")
        try:  # a refusal is answered whatever the store says
            self._audit(
                agent="console",
                action="unauthorized",
                outcome="refused",
                reason=reason,
                figures={"method": method, "path": path, "client": client, "count": count},
            )
        except Exception as exc:
            self._say(f"[console] could not audit a refusal: {type(exc).__name__}: {exc}")

    def _flush_later(self, now: float) -> None:
        """One timer writes every held refusal once its client's gap is over, so the last
        refusals of a burst are recorded even when nothing follows them. Under the lock."""
        if self._timer is not None or self._closed:
            return
        due = min(self._last[c] for c in self._held) + self._gap
        self._timer = threading.Timer(max(0.0, due - now), self.flush)
        self._timer.daemon = True
        self._timer.start()

    def flush(self, everything: bool = False) -> None:
        """Write the held refusals whose gap is over (all of them when ``everything``)."""
        now = time.monotonic()
        with self._lock:
            self._timer = None
            batch = self._take_due(now, everything)
            if self._held:
                self._flush_later(now)
        for client, count, (method, path, what) in batch:
            noun = "refusal" if count == 1 else "refusals"
            if client == MANY_CLIENTS:
                reason = (
                    f"{count} {noun} from many clients since the last event; the latest: {what}"
                )
            else:
                reason = f"{what} ({count} {noun} from this client since the last event)"
            self._write(reason, client, count, method, path)

    def _take_due(
        self, now: float, everything: bool
    ) -> list[tuple[str, int, tuple[str, str, str]]]:
        """The held refusals to write now. A client's sum finding no room in this gap joins
        the shared one, which is written once its own gap is over. Under the lock."""
        due = [
            c
            for c in self._held
            if c != MANY_CLIENTS and (everything or now - self._last[c] >= self._gap)
        ]
        batch: list[tuple[str, int, tuple[str, str, str]]] = []
        for client in due:
            count, latest = self._held.pop(client), self._latest.pop(client)
            if self._slot(now):
                self._last[client] = now
                batch.append((client, count, latest))
            else:
                self._hold(MANY_CLIENTS, count, latest, now)
        many = MANY_CLIENTS in self._held
        if many and (everything or now - self._last[MANY_CLIENTS] >= self._gap):
            count, latest = self._held.pop(MANY_CLIENTS), self._latest.pop(MANY_CLIENTS)
            self._last[MANY_CLIENTS] = now
            batch.append((MANY_CLIENTS, count, latest))
        return batch

    def close(self) -> None:
        """Write what is held now: a stopping console loses no refusal."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        self.flush(everything=True)

    def _forget_quiet(self, now: float) -> None:
        """Clients quiet for longer than the gap, with nothing held, are forgotten, so a
        scan from many addresses cannot grow the map (held refusals are written within a
        gap, which bounds the rest)."""
        if len(self._last) < _MAX_CLIENTS:
            return
        quiet = [c for c, t in self._last.items() if now - t >= self._gap]
        for client in quiet:
            if client not in self._held:
                self._last.pop(client, None)
