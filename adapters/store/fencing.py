"""Fencing: a leader's writes count only while its term is the current one (PostgreSQL).

Every connection a daemon acts through carries its term's epoch (a session setting,
`aifactory.epoch`, given when the connection is opened, so no rollback can lose it; a new
term closes the pooled connections, and one still checked out keeps its old epoch). A
statement trigger on every table but the lease's and the members' compares it with the
current term, holding that row shared until the transaction ends; a new term's update
waits for those holders.
So a stale leader (paused, partitioned) finds every write refused, inside the same
transaction, and no write of an old term commits after a new term began. Connections
without the setting (the CLI, a member's own bookkeeping) are not fenced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from adapters.store.schema_lock import schema_lock

SETTING = "aifactory.epoch"
TERM = "controller"
#: Refusals raise this marker; `is_fenced` looks for it.
MARKER = "aifactory fenced"
UNFENCED = frozenset({"af_lease", "af_member", "af_term"})

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION af_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    token text := current_setting('{SETTING}', true);
    held bigint;
BEGIN
    IF token IS NULL OR token = '' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO held FROM af_term WHERE name = '{TERM}' FOR SHARE;
    IF token::bigint < 1 OR held IS DISTINCT FROM token::bigint THEN
        RAISE EXCEPTION '{MARKER}: a write of term % to % refused, the current term is %',
            token, TG_TABLE_NAME, held USING ERRCODE = 'AF409';
    END IF;
    RETURN NULL;
END $$;
"""


class FencedError(RuntimeError):
    """A write of a term that is no longer current was refused."""


def is_fenced(exc: BaseException | None) -> bool:
    """Whether the error, or one it was raised from (Optuna wraps them), is a refusal."""
    seen = 0
    while exc is not None and seen < 10:
        if MARKER in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Fence:
    """One daemon's fencing token: the epoch its acting connections carry. It starts at 0
    (no term is 0, so nothing is written before a term is won) and only ever moves to a
    newer term: a leader that lost its term keeps the stale epoch, so every write still in
    flight is refused."""

    def __init__(self) -> None:
        self._epoch = 0
        self._lock = threading.Lock()
        self._refused: list[Callable[[str], None]] = []
        self._engines: list[Engine] = []

    @property
    def epoch(self) -> int:
        return self._epoch

    def enter_term(self, epoch: int) -> None:
        with self._lock:
            if epoch < self._epoch:
                raise ValueError(f"term {epoch} is older than term {self._epoch}")
            self._epoch = epoch
            engines = list(self._engines)
        for engine in engines:  # pooled connections carry the old term: open new ones
            engine.dispose()

    def on_refused(self, callback: Callable[[str], None]) -> None:
        """Called (with the database's message) whenever one of our writes is refused."""
        self._refused.append(callback)

    def refused(self, message: str) -> None:
        for callback in list(self._refused):
            callback(message)

    def attach(self, engine: Engine) -> None:
        """Fence an SQLAlchemy engine (ours, Optuna's); connections it opened before carry
        no term, so they are closed."""
        event.listen(engine, "do_connect", self._on_connect)
        event.listen(engine, "handle_error", self._on_error)
        with self._lock:
            self._engines.append(engine)
        engine.dispose()

    def _on_connect(self, _dialect: Any, _record: Any, _cargs: Any, cparams: dict) -> None:
        options = cparams.get("options", "")
        cparams["options"] = f"{options} -c {SETTING}={self._epoch}".strip()

    def _on_error(self, context: Any) -> None:
        """A refusal becomes a short `FencedError` (not the statement and its parameters)."""
        if is_fenced(context.original_exception):
            message = str(context.original_exception).splitlines()[0]
            self.refused(message)
            raise FencedError(message)

    def check_psycopg(self, conn: Any) -> None:
        """A psycopg pool's check (the graph checkpointer, autocommit connections): a round
        trip that also sets the current term."""
        conn.execute("SELECT set_config(%s, %s, false)", (SETTING, str(self._epoch)))


def install_fencing(engine: Engine) -> int:
    """The trigger function, and the trigger on every table of the schema that lacks it
    (Optuna's and the checkpointer's too, once they exist). Idempotent; safe when members
    install at once (one at a time, under the schema lock). Returns tables fenced now."""
    for attempt in range(5):
        try:
            return _install(engine)
        except DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    return 0


def _install(engine: Engine) -> int:
    with schema_lock(engine), engine.begin() as conn:
        conn.execute(text(_FUNCTION))
        conn.execute(
            text("INSERT INTO af_term (name, epoch) VALUES (:n, 0) ON CONFLICT DO NOTHING"),
            {"n": TERM},
        )
        tables = set(
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ).scalars()
        )
        fenced = set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE t.tgname = 'af_fence' AND n.nspname = current_schema()"
                )
            ).scalars()
        )
        todo = sorted(tables - fenced - UNFENCED)
        for table in todo:
            conn.execute(
                text(
                    f'CREATE TRIGGER af_fence BEFORE INSERT OR UPDATE OR DELETE ON "{table}" '
                    "FOR EACH STATEMENT EXECUTE FUNCTION af_fence()"
                )
            )
        return len(todo)
