"""Retry rules as types: permanent failures fail at once, temporary ones wait their delay."""

from __future__ import annotations

from controller.retry import PermanentError, TemporaryError, retry_rule

DELAYS = (1.0, 2.0, 3.0)


def test_backoff_waits_one_two_three_seconds_then_fails() -> None:
    rules = [retry_rule(RuntimeError("db hiccup"), attempt, DELAYS) for attempt in (1, 2, 3, 4)]
    assert [(r.retry, r.delay_s) for r in rules] == [
        (True, 1.0),
        (True, 2.0),
        (True, 3.0),
        (False, 0.0),
    ]


def test_a_permanent_error_fails_at_once_and_a_temporary_one_names_its_delay() -> None:
    assert not retry_rule(PermanentError("dataset gone"), 1, DELAYS).retry
    rule = retry_rule(TemporaryError("busy", delay_s=7.5), 1, DELAYS)
    assert rule.retry and rule.delay_s == 7.5
    assert not retry_rule(TemporaryError("busy", delay_s=7.5), 4, DELAYS).retry
