"""One member at a time changes the schema (PostgreSQL), without waiting inside a statement.

Members that start together all create tables, triggers and the checkpointer's indexes.
The checkpointer's migrations build indexes CONCURRENTLY, which waits for every other
session's running statement to end; a member blocked inside `pg_advisory_lock` is such a
statement, so a blocking lock deadlocks the two. Here the lock is tried, and a member that
does not get it sleeps between tries with no statement running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Engine

KEY = "aifactory-schema"
POLL_S = 0.1


class SchemaLockTimeout(RuntimeError):
    """Another member held the schema lock for longer than we would wait."""


@contextmanager
def schema_lock(engine: Engine, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold the session-level schema lock on a connection of its own for the block."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + timeout_s
        try_lock = text("SELECT pg_try_advisory_lock(hashtext(:k))")
        while not conn.execute(try_lock, {"k": KEY}).scalar():
            if time.monotonic() > deadline:
                raise SchemaLockTimeout(
                    f"another aifactory member held the schema lock for over {timeout_s:.0f} s"
                )
            time.sleep(POLL_S)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": KEY})
