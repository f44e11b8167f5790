"""Shared fixtures: one store suite over SQLite and PostgreSQL, and tiny policies.

PostgreSQL tests need the server at AIFACTORY_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/test). Under CI=true a missing server is a failure;
elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The one AIFACTORY_* variable the tests keep: where their PostgreSQL server is.
KEPT_AIFACTORY_VARIABLES = frozenset(
    {"AIFACTORY_TEST_PG", "AIFACTORY_TEST_RAY", "AIFACTORY_CONSOLE__PORT"}
)

# Isolation from the operator's shell: an exported AIFACTORY_DB_URL or AIFACTORY_STATE_DIR
# must never reach the code under test, or the daemons and CLIs the tests start (they
# inherit this environment). Removed at import, before anything reads settings.
for _name in [n for n in os.environ if n.startswith("AIFACTORY_")]:
    if _name not in KEPT_AIFACTORY_VARIABLES:
        del os.environ[_name]

# every daemon a test starts serves its console on a free port: several run at once, and an
# operator's own daemon may hold 8001
os.environ["AIFACTORY_CONSOLE__PORT"] = "0"
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def e2e_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A daemon's database: SQLite in its state directory, or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'aifactory.db'}"
    return str(request.getfixturevalue("pg_url"))


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


class LoopbackRay:
    """A Ray cluster on loopback for the tests: a head (resource ``head_node``) and a second
    node (``node_1``), one CPU each; tests add and kill nodes of their own on it."""

    def __init__(self, address: str, nodes: list[Any]) -> None:
        self.address = address
        self.nodes = nodes  # the nodes the tests started (stopped at the end), by pid

    def add_node(self, resources: dict[str, float]) -> Any:
        from adapters.cluster.ray_nodes import LOOPBACK_STORE_BYTES, add_node

        node = add_node(self.address, 1, resources, LOOPBACK_STORE_BYTES)
        self.nodes.append(node)
        return node

    def alive_actors(self) -> list[dict[str, Any]]:
        """The live actors of the project's namespace, read in a process of its own (a test
        process must not become a Ray driver)."""
        code = (
            "import json, ray\n"
            f"ray.init(address='{self.address}', namespace='aifactory', log_to_driver=False)\n"
            "from ray._private import state\n"
            "acts = [a for a in state.actors().values() if a.get('State') == 'ALIVE']\n"
            "print(json.dumps([{'id': a.get('ActorID'), 'class': a.get('ActorClassName')}"
            " for a in acts]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LoopbackRay]:
    """The loopback cluster `.ci/run` started (AIFACTORY_TEST_RAY), else one started here
    (and stopped at the end, by the ids of what was started). Without Ray: a failure in CI,
    a skip with the reason elsewhere."""
    address = os.environ.get("AIFACTORY_TEST_RAY")
    if address:
        cluster = LoopbackRay(address, [])
    else:
        try:
            from adapters.cluster.ray_nodes import LOOPBACK_STORE_BYTES, start_head

            head = start_head(None, 1, {"head_node": 1}, LOOPBACK_STORE_BYTES)
            cluster = LoopbackRay(head.address, [head])
            try:
                cluster.add_node({"node_1": 1})
            except Exception:
                head.stop()
                raise
        except Exception as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI requires a Ray cluster: {exc}")
            pytest.skip(f"cannot start a Ray cluster here: {exc}")
    try:
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            node.stop()
