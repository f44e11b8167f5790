"""Served prompts kept as training data, when a line's policy asks (`data.capture`).

The server hands every answered request to :meth:`TrafficCapture.offer`; what is kept is
decided here, on the request's thread, cheaply and without the store: never a request that
said ``"store": false`` (nor, with ``opt_in``, one that did not say ``"store": true``), only
the policy's sample, never a prompt over ``max_prompt_bytes``, only while the line's byte
allowance for the UTC day lasts, and always redacted before it leaves this module. Kept
prompts queue for a writer thread that stores them in batches through a
:class:`CaptureSink`, so a slow or failing store never slows an answer; a full queue drops
(counted), it never blocks. The allowance is counted here and, on the writer thread, against
what the store says the line kept that day on this member and before it (a restart does not
reset it). The store's count covers every member's rows for the line: the allowance is the
line's, though each member lets requests queue against its own count first.
"""

from __future__ import annotations

import hashlib
import queue
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

REDACTED = "[redacted]"
_QUEUE_MAX = 10_000
_BATCH = 200


@dataclass(frozen=True)
class CaptureSpec:
    """A line's capture settings, as its policy gives them."""

    sample_rate: float = 1.0
    max_bytes_per_day: int = 5_000_000
    redact: tuple[str, ...] = ()
    min_prompt_bytes: int = 16
    max_prompt_bytes: int = 65_536
    opt_in: bool = False  # keep only requests that said "store": true
    patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(re.compile(p) for p in self.redact))

    def scrub(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text


@dataclass(frozen=True)
class Captured:
    """One kept prompt, redacted: which line and version served it, under which answer."""

    line: str
    version: int
    completion_id: str
    text: str
    sha256: str
    day: str
    captured_at: float
    day_cap: int = 0  # the line's allowance for the day (bytes); 0: none


class CaptureSink(Protocol):
    """Where kept prompts go (the store). `add` ignores a prompt the line already holds
    (same text) and returns how many were new; `bytes_on` is what a line kept on a day."""

    def add(self, rows: list[Captured]) -> int: ...

    def bytes_on(self, line: str, day: str) -> int: ...


class TrafficCapture:
    """Decides per request, queues, and writes in the background (one thread)."""

    def __init__(self, sink: CaptureSink, seed: int | None = None) -> None:
        self.sink = sink
        self.dropped = 0  # queue full, or the store failed: counted, never retried
        self.kept = 0
        self._rng = random.Random(seed)
        self._queue: queue.Queue[Captured | None] = queue.Queue(_QUEUE_MAX)
        self._used: dict[tuple[str, str], int] = {}  # (line, day) -> bytes queued here
        self._stored: dict[tuple[str, str], int] = {}  # (line, day) -> bytes in the store
        self._pending_count: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._write, name="aifactory-capture", daemon=True)
        self._thread.start()

    def offer(
        self,
        spec: CaptureSpec,
        line: str,
        version: int,
        completion_id: str,
        prompt: str,
        store: bool | None = None,
    ) -> bool:
        """Keep this prompt if the spec says so; True when queued."""
        if store is False or (spec.opt_in and store is not True):
            return False
        if len(prompt) > spec.max_prompt_bytes or self._rng.random() >= spec.sample_rate:
            return False
        text = spec.scrub(prompt)
        try:  # what ingestion would quarantine (NUL, not UTF-8) would spoil a whole batch
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            return False
        size = len(raw)
        if not spec.min_prompt_bytes <= size <= spec.max_prompt_bytes or b"\x00" in raw:
            return False
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        if not self._allow(spec, line, day, size):
            return False
        digest = hashlib.sha256(raw).hexdigest()
        row = Captured(
            line, version, completion_id, text, digest, day, time.time(), spec.max_bytes_per_day
        )
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False
        return True

    def _allow(self, spec: CaptureSpec, line: str, day: str, size: int) -> bool:
        """The day's allowance as this process counted it (the writer also checks it
        against the store)."""
        key = (line, day)
        with self._lock:
            used = self._used.get(key, 0)
            if used + size > spec.max_bytes_per_day:
                return False
            self._used[key] = used + size
        return True

    def _within_allowance(self, rows: list[Captured]) -> list[Captured]:
        """On the writer thread: the rows that fit what the store says was kept today
        (asked once per line and day; an unreachable store keeps nothing)."""
        kept, counted = [], dict(self._stored)
        for row in rows:
            key = (row.line, row.day)
            if key not in counted:
                counted[key] = self.sink.bytes_on(row.line, row.day)
            size = len(row.text.encode("utf-8"))
            if row.day_cap and counted[key] + size > row.day_cap:
                continue
            counted[key] += size
            kept.append(row)
        self._pending_count = counted  # taken once the rows are stored
        return kept

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _write(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            rows = [first]
            while len(rows) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # seen after this batch
                    self._queue.task_done()
                    break
                rows.append(more)
            try:
                fitting = self._within_allowance(rows)
                new = self.sink.add(fitting) if fitting else 0
                self._stored = self._pending_count
                with self._lock:
                    self.kept += new
                    self.dropped += len(rows) - len(fitting)
            except Exception:
                with self._lock:
                    self.dropped += len(rows)
            finally:
                for _ in rows:
                    self._queue.task_done()
