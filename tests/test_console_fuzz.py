"""Schemathesis over the console's published OpenAPI spec, in-process: whatever a client
sends, with an operator's token or without one, the console never answers 5xx, and every
error is a JSON body with the console's error envelope."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import PG_ADMIN_URL, _pg_available, drop_pg_database, new_pg_database
from console_fill import fill_factory
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from adapters.store.db import Store
from controller.console.app import ConsoleDeps, build_console_app
from controller.console.guard import Gate
from controller.console.tokens import TokenSource
from controller.operator_actions import OperatorActions
from controller.queries import Queries

TOKEN = "fuzz-token-0123456789abcdef"


def _app(url: str | None = None) -> Any:
    """The console over a filled store: SQLite, or the PostgreSQL database at ``url``
    (made at collection: the schema is read from the app when the tests are generated)."""
    work = Path(tempfile.mkdtemp(prefix="aifactory-fuzz-"))
    atexit.register(shutil.rmtree, work, True)
    store = Store(url or f"sqlite:///{work / 'fuzz.db'}")
    store.create_all()
    atexit.register(store.dispose)
    filled = fill_factory(store, work)
    queries = Queries(store, filled.models_dir)
    # reads need the token too (as off loopback), so the run without one meets every refusal
    gate = Gate(TokenSource("X", f"fuzz:{TOKEN}", work), False, queries.audit.append, _quiet)
    actions = OperatorActions(queries.registry, queries.audit)
    return build_console_app(ConsoleDeps(queries, actions, gate))


def _pg_app() -> Any:
    """The same on a database of its own (PostgreSQL refuses what SQLite takes: a NUL, an
    integer past int4), or None where no server answers."""
    if _pg_available() is not None:
        return None
    url, name = new_pg_database(PG_ADMIN_URL)
    atexit.register(drop_pg_database, PG_ADMIN_URL, name)
    return _app(url)


def _quiet(_: str) -> None:
    """Refusals are said to the daemon's log; here there is none."""


def errors_are_json(_ctx: Any, response: Any, _case: Any) -> None:
    """Every 4xx carries the console's envelope: {"error": {"code", "message"}}."""
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (response.status_code, content_type)
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error


CHECKS = [not_a_server_error, errors_are_json]
FUZZ = settings(
    max_examples=15,  # per operation
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # nothing written into the repository
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
_PG = _pg_app()


@schema.parametrize()
@FUZZ
def test_with_a_token(case: Any) -> None:
    case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {TOKEN}"})


@schema.parametrize()
@FUZZ
def test_without_a_token(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


if _PG is not None:
    pg_schema = schemathesis.openapi.from_asgi("/openapi.json", _PG)

    @pg_schema.parametrize()
    @FUZZ
    @pytest.mark.postgres
    def test_on_postgresql_with_a_token(case: Any) -> None:
        case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {TOKEN}"})

else:

    def test_on_postgresql_with_a_token(pg_server: str) -> None:
        """No server: skipped with the reason (a failure under CI=true)."""
