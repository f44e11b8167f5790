"""Shared fixtures: one store suite over SQLite and PostgreSQL, and tiny policies.

PostgreSQL tests need the server at AIFACTORY_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/test). Under CI=true a missing server is a failure;
elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The one AIFACTORY_* variable the tests keep: where their PostgreSQL server is.
KEPT_AIFACTORY_VARIABLES = frozenset({"AIFACTORY_TEST_PG"})

# Isolation from the operator's shell: an exported AIFACTORY_DB_URL or AIFACTORY_STATE_DIR
# must never reach the code under test, or the daemons and CLIs the tests start (they
# inherit this environment). Removed at import, before anything reads settings.
for _name in [n for n in os.environ if n.startswith("AIFACTORY_")]:
    if _name not in KEPT_AIFACTORY_VARIABLES:
        del os.environ[_name]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from adapters.serving import ServingServer  # noqa: E402  (after the environment is clean)
from adapters.store.db import Store  # noqa: E402

PG_ADMIN_URL = os.environ.get("AIFACTORY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TESTS = Path(__file__).parent
TINY_POLICY = TESTS / "configs" / "tiny.yaml"


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI requires PostgreSQL: {problem}")
        pytest.skip(problem)
    return PG_ADMIN_URL


def new_pg_database(admin_url: str) -> tuple[str, str]:
    """Create an empty database; returns (url, name)."""
    import psycopg

    name = f"aifactory_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    url, name = new_pg_database(pg_server)
    try:
        yield url
    finally:
        drop_pg_database(pg_server, name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.create_all()
    try:
        yield s
    finally:
        s.dispose()


@pytest.fixture
def server() -> Iterator[ServingServer]:
    """An embedded HTTP server on a free loopback port, stopped after the test."""
    srv = ServingServer(port=0, max_tokens_limit=8)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
