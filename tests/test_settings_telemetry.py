"""Settings precedence (flags > AIFACTORY_* > defaults) and the tick's host telemetry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapters.telemetry import HostTelemetry
from controller.cli import _settings, build_parser
from controller.settings import Settings


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIFACTORY_DB_URL", "postgresql://u@h/db")
    monkeypatch.setenv("AIFACTORY_STATE_DIR", str(tmp_path / "env-state"))
    monkeypatch.setenv("AIFACTORY_PORT", "9123")
    s = Settings()
    assert (s.db_url, s.state_dir, s.port) == ("postgresql://u@h/db", tmp_path / "env-state", 9123)
    args = build_parser().parse_args(
        ["run", "--port", "0", "--state-dir", str(tmp_path / "flag-state"), "--no-serve"]
    )
    s = _settings(args)
    assert s.port == 0 and s.state_dir == tmp_path / "flag-state" and not s.serve
    assert s.db_url == "postgresql://u@h/db"  # not overridden: the environment stands


def test_default_db_is_sqlite_under_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AIFACTORY_DB_URL", raising=False)
    s = Settings(state_dir=tmp_path)
    assert s.resolved_db_url == f"sqlite:///{(tmp_path / 'aifactory.db').resolve()}"


def test_bad_environment_value_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFACTORY_PORT", "eighty")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_host_telemetry_sample() -> None:
    t = HostTelemetry(watts_per_core=10.0)
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    sample = t.sample()
    assert sample.method == "estimated" and sample.cpu_count >= 1
    assert sample.daemon_cpu_pct > 10
    assert 0 <= sample.host_power_w <= sample.cpu_count * 10.0
    assert set(sample.as_dict()) >= {"load_1m", "host_power_w", "method"}
