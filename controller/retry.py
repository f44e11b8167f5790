"""Retry rules as types: a step that fails temporarily is retried from its checkpoint after
a delay; a permanent failure fails the cycle at once.

Anything not marked permanent is treated as temporary (a database hiccup, a worker that
could not start), with the backoff from the settings tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TemporaryError(Exception):
    """Worth retrying after `delay_s` (None: the settings' backoff for this attempt)."""

    def __init__(self, message: str, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(Exception):
    """Retrying cannot help (a broken policy or workload): fail the cycle now."""


@dataclass(frozen=True)
class RetryRule:
    retry: bool
    delay_s: float = 0.0


def retry_rule(exc: BaseException, attempt: int, delays_s: Sequence[float]) -> RetryRule:
    """Attempt `attempt` (1-based) just failed with `exc`: retry it, and after how long?
    `delays_s` holds one delay per retry, so a cycle runs at most len(delays_s) + 1 times."""
    if isinstance(exc, PermanentError) or attempt > len(delays_s):
        return RetryRule(False)
    if isinstance(exc, TemporaryError) and exc.delay_s is not None:
        return RetryRule(True, exc.delay_s)
    return RetryRule(True, delays_s[attempt - 1])
