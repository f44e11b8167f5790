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


def utcnow_iso() -> str:
    """Timestamps as fixed-width ISO text: sortable, hashable, identical on every backend."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif idle_tx_timeout_s is not None:
            # a member paused inside a transaction (SIGSTOP, a VM freeze) must not hold its
            # locks for ever: the server ends such a session, and a new term can begin
            ms = int(idle_tx_timeout_s * 1000)
            kwargs["connect_args"] = {"options": f"-c idle_in_transaction_session_timeout={ms}"}
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
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool

            plain = make_url(self.url).set(drivername="postgresql")
            dsn = plain.render_as_string(hide_password=False)
            # a pool that checks connections, so a dropped connection during a long trainer
            # step does not fail the next checkpoint write
            fence = self.fence
            check = ConnectionPool.check_connection if fence is None else fence.check_psycopg
            with ConnectionPool(
                dsn,
                min_size=1,
                max_size=4,
                kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
                check=check,
                open=True,
            ) as pool:
                saver = PostgresSaver(pool)  # type: ignore[arg-type]
                saver.setup()
                if fence is not None:  # its tables exist now: fence them too
                    install_fencing(self.engine)
                yield saver

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
