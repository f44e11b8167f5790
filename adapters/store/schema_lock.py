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
from sqlalchemy.engine import Connection, Engine

KEY = "aifactory-schema"
POLL_S = 0.1


class SchemaLockTimeout(RuntimeError):
    """Another member held the schema lock for longer than we would wait."""


@contextmanager
def schema_lock(engine: Engine, timeout_s: float = 900.0) -> Iterator[None]:
    """Hold the session-level schema lock on a connection of its own for the block (long:
    an upgrade may build an index on a large table meanwhile). The connection never goes
    back to the pool holding the lock: if the unlock fails, it is discarded."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + timeout_s
        try_lock = text("SELECT pg_try_advisory_lock(hashtext(:k))")
        locked = False
        try:
            while not (locked := bool(conn.execute(try_lock, {"k": KEY}).scalar())):
                if time.monotonic() > deadline:
                    raise SchemaLockTimeout(
                        f"another aifactory member held the schema lock for over {timeout_s:.0f} s"
                    )
                time.sleep(POLL_S)
            yield
        finally:
            if locked:
                _unlock(conn)


def _unlock(conn: Connection) -> None:
    try:
        conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": KEY})
    except Exception:
        conn.invalidate()  # closing the session releases the lock; nothing to report
