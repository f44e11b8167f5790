"""One settings object for the daemon and CLI, fed by flags and AIFACTORY_* variables.

Precedence: command-line flags, then environment, then defaults. Built once at the edge
and passed explicitly; nothing deeper reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseModel):
    """The daemon's own timing knobs (not the operator's policy): how it retries, polls and
    shuts down. Set with AIFACTORY_RUNTIME__<NAME>, e.g. AIFACTORY_RUNTIME__CANARY_POLL_S."""

    cycle_retry_delays_s: tuple[float, ...] = Field(
        default=(1.0, 2.0, 3.0), description="One delay per retry of a failed cycle step."
    )
    canary_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="How often a canary step "
        "checks for an abort or a champion changed by someone else.",
    )
    serving_check_rounds: int = Field(
        default=5, ge=1, description="Timed rounds per model in the evaluator's serving check."
    )
    status_stale_s: float = Field(
        default=120.0,
        gt=0,
        description="A heartbeat older than this shows the daemon as not running.",
    )
    heartbeat_s: float = Field(
        default=10.0,
        gt=0,
        description="Each line's heartbeat is "
        "written this often, and at once when what it shows changes.",
    )
    shutdown_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest a clean shutdown may take before the daemon exits anyway.",
    )
    line_join_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a stopping factory waits for each line's cycle to checkpoint.",
    )


class LeaseSettings(BaseModel):
    """Leader election among daemons sharing one PostgreSQL database. Set with
    AIFACTORY_LEASE__<NAME>, e.g. AIFACTORY_LEASE__TTL_S."""

    ttl_s: float = Field(
        default=15.0,
        gt=0,
        description="How long a leader's lease lasts unrenewed; a follower takes over "
        "within this plus one renewal interval of the leader's last renewal.",
    )
    renew_s: float = Field(
        default=3.0,
        gt=0,
        description="How often the leader renews its lease and followers ask for it.",
    )

    @model_validator(mode="after")
    def _renews_in_time(self) -> LeaseSettings:
        if self.renew_s * 2 > self.ttl_s:
            raise ValueError(
                f"lease.renew_s ({self.renew_s:g}) must be at most half of lease.ttl_s "
                f"({self.ttl_s:g}), so one failed renewal does not end a healthy term"
            )
        return self


class ServingSettings(BaseModel):
    """Guards of the OpenAI-compatible endpoint. Set with AIFACTORY_SERVING__<NAME>."""

    api_keys_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding the API keys clients must "
        "send (`Authorization: Bearer KEY`), separated by commas; unset: no key asked "
        "(like vLLM's --api-key). /healthz and /metrics stay open.",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body accepted; a larger one gets 413.",
    )
    max_prompt_bytes: int = Field(
        default=65_536,
        ge=1,
        description="Largest prompt (UTF-8 bytes, chat messages rendered) accepted; a "
        "larger one gets 400 instead of being cut.",
    )


class ConsoleSettings(BaseModel):
    """The operator console (JSON API and dashboard). Set with AIFACTORY_CONSOLE__<NAME>
    or the `--console-*` flags."""

    enabled: bool = Field(default=True, description="Serve the console.")
    host: str = Field(default="127.0.0.1", description="Console address.")
    port: int = Field(default=8001, ge=0, le=65535, description="Console port (0: any free).")
    tokens_env: str = Field(
        default="AIFACTORY_CONSOLE_TOKENS",
        description="Environment variable with the operators' tokens, `name:token` "
        "separated by commas; unset or empty: the tokens file in the state directory "
        "(written at first start, mode 0600).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AIFACTORY_", env_nested_delimiter="__", extra="ignore"
    )

    state_dir: Path = Field(default=Path("aifactory-state"), description="Artefacts, data, DB.")
    db_url: str | None = Field(default=None, description="Default: SQLite under state_dir.")
    policy: Path = Field(default=Path("configs/default.yaml"))
    factory: Path | None = Field(
        default=None, description="A factory file (many lines); overrides `policy`."
    )
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

    artefacts: str | None = Field(
        default=None,
        description="Where every member reads artefacts and data splits: 'db' (the "
        "database; the default with PostgreSQL), 'file:///shared/dir', or 'none' (the "
        "default with SQLite: one daemon, its own state directory).",
    )

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    @property
    def shared(self) -> bool:
        """Several daemons may share this store (PostgreSQL): they elect a leader."""
        return not self.resolved_db_url.startswith("sqlite")

    @property
    def artefact_share(self) -> str:
        if self.artefacts is not None:
            return self.artefacts
        return "db" if self.shared else "none"

    @property
    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.state_dir / 'aifactory.db').resolve()}"

    def ensure_dirs(self) -> None:
        for sub in ("", "data", "quarantine", "models", "trials"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
