"""One settings object for the daemon and CLI, fed by flags and AIFACTORY_* variables.

Precedence: command-line flags, then environment, then defaults. Built once at the edge
and passed explicitly; nothing deeper reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIFACTORY_", extra="ignore")

    state_dir: Path = Field(default=Path("aifactory-state"), description="Artefacts, data, DB.")
    db_url: str | None = Field(default=None, description="Default: SQLite under state_dir.")
    policy: Path = Field(default=Path("configs/default.yaml"))
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="Serving port (0: any free).")
    serve: bool = True
    tick_s: float = Field(default=2.0, gt=0, description="Watch tick between cycles.")
    threads: int = Field(default=2, gt=0, description="Torch threads per trial/evaluation.")
    log_level: str = "WARNING"
    nvml_module: str | None = Field(
        default=None,
        description="Import name of a pynvml-compatible module to use instead of pynvml "
        "(an NVML shim, or a fake NVML in tests).",
    )

    @property
    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.state_dir / 'aifactory.db').resolve()}"

    def ensure_dirs(self) -> None:
        for sub in ("", "data", "quarantine", "models", "trials"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
