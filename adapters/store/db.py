"""The database: one URL shared by our tables, the LangGraph checkpointer and Optuna.

SQLite (a file under the state directory) is the embedded default; PostgreSQL is the same
code given a URL. Everything that writes goes through short transactions so a daemon
killed at any instant leaves the store consistent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session, SQLModel, create_engine

from adapters.store import tables  # noqa: F401  (registers the tables)
from adapters.store.fencing import Fence, install_fencing
from adapters.store.schema_lock import schema_lock


def utcnow_iso() -> str:
    """Timestamps as fixed-width ISO text: sortable, hashable, identical on every backend."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def member_connect_args(idle_tx_timeout_s: float) -> dict[str, Any]:
    """libpq settings for a daemon sharing the database with others. A member paused inside
    a transaction (SIGSTOP, a frozen VM) must not hold its locks for ever: the server ends
    such a session, so a new term can begin. A lost host is noticed by keepalives, and a
    connection attempt gives up, instead of waiting on TCP for hours."""
    ms = int(idle_tx_timeout_s * 1000)
    return {
        "options": f"-c idle_in_transaction_session_timeout={ms}",
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


def normalise_db_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and pick the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


class Store:
    """Owns the engine; hands out sessions, the graph checkpointer and the Optuna URL."""

    def __init__(
        self, url: str, fence: Fence | None = None, idle_tx_timeout_s: float | None = None
    ) -> None:
        self.url = normalise_db_url(url)
        self.fence = fence  # set: every write carries its term's epoch (PostgreSQL)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.sqlite_path = parsed.database if self.is_sqlite else None
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        self.idle_tx_timeout_s = idle_tx_timeout_s
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif idle_tx_timeout_s is not None:
            kwargs["connect_args"] = member_connect_args(idle_tx_timeout_s)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif fence is not None:
            fence.attach(self.engine)

    def create_all(self) -> None:
        """Create missing tables; tolerate another process (daemon, CLI) doing it at once."""
        for attempt in range(5):
            try:
                SQLModel.metadata.create_all(self.engine)
                self._add_missing_columns()
                return
            except (OperationalError, IntegrityError, ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _add_missing_columns(self) -> None:
        """A store made by an earlier version lacks the nullable columns added since (the
        audit event's `line`): add them, so an upgrade keeps the data and the chain."""
        existing = inspect(self.engine)
        for table in SQLModel.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in have or not column.nullable:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                with self.engine.begin() as conn:
                    conn.execute(
                        text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
                    )
                    for index in table.indexes:  # and its index, as a new store has it
                        if [c.name for c in index.columns] == [column.name]:
                            index.create(conn, checkfirst=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def checkpointer(self) -> Iterator[Any]:
        """A LangGraph checkpointer in this same database."""
        if self.is_sqlite:
            from langgraph.checkpoint.sqlite import SqliteSaver

            conn = sqlite3.connect(self.sqlite_path or ":memory:", check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            try:
                saver = SqliteSaver(conn)
                saver.setup()
                yield saver
            finally:
                conn.close()
        else:
            import psycopg
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool

            plain = make_url(self.url).set(drivername="postgresql")
            dsn = plain.render_as_string(hide_password=False)
            # a pool that checks connections, so a dropped connection during a long trainer
            # step does not fail the next checkpoint write
            fence = self.fence
            check = ConnectionPool.check_connection if fence is None else fence.check_psycopg
            kwargs = {"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0}
            if self.idle_tx_timeout_s is not None:
                kwargs |= member_connect_args(self.idle_tx_timeout_s)
            # its tables (and migrations) through a connection of no term: a member that
            # does not lead can still start after an upgrade adds a migration
            # members starting together migrate one at a time
            with schema_lock(self.engine), psycopg.connect(dsn, **kwargs) as conn:  # type: ignore[arg-type]
                PostgresSaver(conn).setup()  # type: ignore[arg-type]
            if fence is not None:  # its tables exist now: fence them too
                install_fencing(self.engine)
            with ConnectionPool(
                dsn, min_size=1, max_size=4, kwargs=kwargs, check=check, open=True
            ) as pool:
                yield PostgresSaver(pool)  # type: ignore[arg-type]

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # deleted text (expired traffic) is overwritten
    cur.close()
