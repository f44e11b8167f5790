"""The tests never see the operator's AIFACTORY_* settings (conftest removes them at import).

The proof runs pytest on this file's probe in a child started as from an operator's shell
(a database URL and a state directory exported): inside, nothing of them is left, neither in
the settings object nor in the processes the test starts, and the database is never made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KEPT_AIFACTORY_VARIABLES

ROOT = Path(__file__).parent.parent
PROBE = "ENV_ISOLATION_PROBE"  # not AIFACTORY_*: it must survive to tell the probe to run


def _aifactory_names(environ: dict[str, str] | os._Environ[str]) -> set[str]:
    return {name for name in environ if name.startswith("AIFACTORY_")}


def test_only_the_kept_variables_are_set() -> None:
    assert _aifactory_names(os.environ) <= KEPT_AIFACTORY_VARIABLES


@pytest.mark.skipif(PROBE not in os.environ, reason="run by the test below, in a child pytest")
def test_probe_in_an_operator_shell() -> None:
    from controller.settings import Settings

    names = _aifactory_names(os.environ)
    assert "AIFACTORY_TEST_PG" in names and names <= KEPT_AIFACTORY_VARIABLES
    settings = Settings()
    assert settings.db_url is None and settings.state_dir == Path("aifactory-state")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.environ))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "AIFACTORY_DB_URL" not in child.stdout and "AIFACTORY_TEST_PG" in child.stdout


def test_an_operators_exported_settings_do_not_reach_the_tests(tmp_path: Path) -> None:
    operator_db = tmp_path / "operator.db"
    env = os.environ | {
        PROBE: "1",
        "AIFACTORY_DB_URL": f"sqlite:///{operator_db}",
        "AIFACTORY_STATE_DIR": str(tmp_path / "operator-state"),
        "AIFACTORY_POLICY": str(tmp_path / "operator-policy.yaml"),
        "AIFACTORY_TEST_PG": "postgresql://kept@127.0.0.1:1/kept",
    }
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "probe"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:] + res.stderr
    assert not operator_db.exists() and not (tmp_path / "operator-state").exists()
