"""Stored records (SQLModel tables): the *record* side of the loop.

One table per aggregate. JSON payloads are stored as canonical text so the same rows hash
identically on SQLite and PostgreSQL. Timestamps that take part in hashes are ISO-8601 text.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _text() -> Column:
    return Column(Text, nullable=False, default="{}")


class PolicyVersionRow(SQLModel, table=True):
    __tablename__ = "af_policy_version"
    version: str = Field(primary_key=True, max_length=32)
    name: str = Field(index=True, max_length=64)
    body: str = Field(sa_column=_text())
    source: str = ""
    created_at: str


class AuditEventRow(SQLModel, table=True):
    """One agent decision. `prev_hash` is unique, so the chain can never fork."""

    __tablename__ = "af_audit_event"
    seq: int | None = Field(default=None, primary_key=True)
    ts: str = Field(index=True)
    cycle_id: str | None = Field(default=None, index=True, max_length=64)
    agent: str = Field(index=True, max_length=32)
    action: str = Field(max_length=64)
    outcome: str = Field(max_length=32)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    figures: str = Field(sa_column=_text())
    policy_version: str | None = Field(default=None, max_length=32)
    idem_key: str | None = Field(default=None, unique=True, max_length=200)
    prev_hash: str = Field(unique=True, max_length=64)
    hash: str = Field(max_length=64)
    line: str | None = Field(default=None, index=True, max_length=64)


class AuditHeadRow(SQLModel, table=True):
    """The chain's head (count and last hash), updated with every append in one transaction,
    so that `verify` also notices events cut off the end of the chain."""

    __tablename__ = "af_audit_head"
    id: int = Field(default=1, primary_key=True)
    count: int = 0
    last_hash: str = Field(default="0" * 64, max_length=64)


class DataFileRow(SQLModel, table=True):
    """A file seen by a data source, ingested or quarantined exactly once by content hash."""

    __tablename__ = "af_data_file"
    policy_name: str = Field(primary_key=True, max_length=64)
    sha256: str = Field(primary_key=True, max_length=64)
    source_path: str = Field(sa_column=Column(Text, nullable=False))
    label: str = ""
    size_bytes: int = 0
    status: str = Field(max_length=32)  # ingested | quarantined
    reason: str = ""
    blob_path: str = ""
    first_seen: str = ""
    dataset_version: str | None = None


class DatasetVersionRow(SQLModel, table=True):
    __tablename__ = "af_dataset_version"
    version: str = Field(primary_key=True, max_length=64)
    policy_name: str = Field(index=True, max_length=64)
    parent: str | None = None
    file_hashes: str = Field(sa_column=_text())
    new_file_hashes: str = Field(sa_column=_text())
    n_files: int = 0
    n_bytes: int = 0
    byte_hist: str = Field(sa_column=_text())
    created_at: str = ""
    cycle_id: str | None = None


class CycleRow(SQLModel, table=True):
    __tablename__ = "af_cycle"
    id: str = Field(primary_key=True, max_length=64)
    policy_name: str = Field(index=True, max_length=64)
    number: int
    policy_version: str = ""
    trigger: str = ""
    status: str = Field(default="running", max_length=32)
    started_at: str = ""
    finished_at: str | None = None
    summary: str = Field(sa_column=_text())


class TrialRunRow(SQLModel, table=True):
    """A trial's side effect, keyed so a resumed cycle never starts it twice."""

    __tablename__ = "af_trial_run"
    key: str = Field(primary_key=True, max_length=200)
    cycle_id: str = Field(index=True, max_length=64)
    study_name: str = ""
    optuna_number: int | None = None
    params: str = Field(sa_column=_text())
    status: str = Field(default="running", max_length=32)  # running|trained|complete|failed
    result: str = Field(sa_column=_text())
    error: str = ""


class ModelVersionRow(SQLModel, table=True):
    __tablename__ = "af_model_version"
    __table_args__ = (UniqueConstraint("policy_name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    policy_name: str = Field(index=True, max_length=64)
    version: int
    idem_key: str = Field(unique=True, max_length=200)
    cycle_id: str = ""
    dataset_version: str = ""
    trial_key: str = ""
    params: str = Field(sa_column=_text())
    artefact_sha256: str = ""
    artefact_path: str = ""
    tokens: int = 0
    joules: float = 0.0
    energy_method: str = ""
    valid_bpb: float | None = None
    evaluation: str = Field(sa_column=_text())
    status: str = Field(default="candidate", max_length=32)  # candidate|blessed|refused
    created_at: str = ""


class AliasRow(SQLModel, table=True):
    __tablename__ = "af_alias"
    policy_name: str = Field(primary_key=True, max_length=64)
    alias: str = Field(primary_key=True, max_length=32)
    version: int
    updated_at: str = ""
    updated_by: str = ""
    reason: str = ""


class AliasMoveRow(SQLModel, table=True):
    """History of every alias move: what served when, who moved it and why."""

    __tablename__ = "af_alias_move"
    id: int | None = Field(default=None, primary_key=True)
    policy_name: str = Field(index=True, max_length=64)
    alias: str = Field(max_length=32)
    from_version: int | None = None
    to_version: int | None = None
    at: str = ""
    by: str = ""
    reason: str = ""
    idem_key: str | None = Field(default=None, unique=True, max_length=200)


class LedgerRow(SQLModel, table=True):
    """Tokens and joules spent, one row per side effect (idempotent by key)."""

    __tablename__ = "af_ledger"
    key: str = Field(primary_key=True, max_length=200)
    policy_name: str = Field(index=True, max_length=64)
    cycle_id: str | None = Field(default=None, index=True, max_length=64)
    day: str = Field(index=True, max_length=10)
    kind: str = Field(max_length=32)  # train | eval | serve | llm
    tokens: int = 0
    joules: float = 0.0
    method: str = ""  # measured | estimated | unmetered
    model_version: int | None = None  # serving rows: which version answered
    created_at: str = ""
    node: str | None = Field(default=None, max_length=200)  # training rows: where it ran


class DaemonStateRow(SQLModel, table=True):
    """What a running daemon publishes for `aifactory status`."""

    __tablename__ = "af_daemon_state"
    policy_name: str = Field(primary_key=True, max_length=64)
    pid: int = 0
    started_at: str = ""
    heartbeat_at: str = ""
    next_cycle_at: str | None = None
    serving_url: str = ""
    served_version: int | None = None
    policy_path: str = ""
    policy_version: str = ""
    energy_source: str = ""
    telemetry: str = Field(default="{}", sa_column=Column(Text, nullable=True))
    owner: str | None = Field(default=None, max_length=64)  # the line's team (chargeback)
    cluster: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    console_url: str | None = None  # the operator console of the daemon that runs the line


class ApprovalRow(SQLModel, table=True):
    """A promotion waiting for a person (approval: required)."""

    __tablename__ = "af_approval"
    id: int | None = Field(default=None, primary_key=True)
    policy_name: str = Field(index=True, max_length=64)
    cycle_id: str = Field(unique=True, max_length=64)
    version: int
    status: str = Field(default="pending", max_length=32)  # pending|approved|rejected
    requested_at: str = ""
    decided_at: str | None = None
    decided_by: str = ""
    reason: str = ""


class RolloutRow(SQLModel, table=True):
    """A canary rollout: the desired traffic split serving follows, and where it stands.

    status: running | paused (waits for a person) | promoted | rolled_back | aborted.
    A person's answer to a paused step is `decision` (continue | abort) until consumed.
    """

    __tablename__ = "af_rollout"
    id: int | None = Field(default=None, primary_key=True)
    policy_name: str = Field(index=True, max_length=64)
    cycle_id: str = Field(unique=True, max_length=64)
    champion_version: int | None = None
    challenger_version: int
    steps: str = Field(sa_column=_text())  # JSON list of percentages
    step: int = 0
    weight_pct: float = 0.0
    loss_sample_rate: float = 0.0
    status: str = Field(default="running", max_length=32)
    reason: str = ""
    decision: str | None = Field(default=None, max_length=32)
    decided_by: str = ""
    decision_reason: str = ""
    started_at: str = ""
    updated_at: str = ""


class ParetoPointRow(SQLModel, table=True):
    """Each cycle's trials on the quality/energy plane; `on_front` marks the Pareto front."""

    __tablename__ = "af_pareto_point"
    id: int | None = Field(default=None, primary_key=True)
    cycle_id: str = Field(index=True, max_length=64)
    trial_key: str = Field(unique=True, max_length=200)
    optuna_number: int | None = None
    valid_bpb: float | None = None
    energy_cost: float | None = None
    on_front: bool = False
    params: str = Field(sa_column=_text())


class GpuSettingRow(SQLModel, table=True):
    """One changed GPU setting: the value to go back to, and whether it went back.

    Written by ``adapters.store.gpu_settings.SqlSettingsJournal`` before the device changes.
    """

    __tablename__ = "af_gpu_setting"
    id: int | None = Field(default=None, primary_key=True)
    device_uuid: str = Field(index=True, max_length=96)
    knob: str = Field(max_length=32)
    original_value: float
    applied_value: float
    applied_at: str
    restored_at: str | None = Field(default=None, index=True)
    reason: str = Field(sa_column=Column(Text, nullable=False))


class LeaseRow(SQLModel, table=True):
    """Who leads the daemons sharing this database (PostgreSQL only). Times are the
    database's own clock (seconds since the epoch), so members' clocks never disagree.
    `epoch` only grows: each new term has a higher one, and fenced writes carry it."""

    __tablename__ = "af_lease"
    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(default="", max_length=200)
    epoch: int = 0
    renewed_at: float = 0.0
    expires_at: float = 0.0
    reason: str = ""


class MemberRow(SQLModel, table=True):
    """One daemon sharing the database: what `aifactory status` shows of it, and the writes
    of its that the fence refused (the leader audits them). Never fenced itself."""

    __tablename__ = "af_member"
    id: str = Field(primary_key=True, max_length=200)
    host: str = ""
    pid: int = 0
    started_at: str = ""
    heartbeat_at: float = 0.0  # database clock
    role: str = Field(default="follower", max_length=16)  # leader | follower | stopped
    epoch: int = 0  # the term it leads, or last led
    serving_url: str = ""
    fenced_writes: int = 0
    fenced_detail: str = Field(default="", sa_column=Column(Text, nullable=True))
    fenced_seen: int = 0  # how many of them the leader has audited


class BlobRow(SQLModel, table=True):
    """A file every member can read (artefacts, data splits), by its path under the state
    directory; `sha256` is checked on every fetch."""

    __tablename__ = "af_blob"
    key: str = Field(primary_key=True, max_length=400)
    sha256: str = Field(max_length=64)
    size: int = 0
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: str = ""


class TermRow(SQLModel, table=True):
    """The current leadership term's epoch, apart from the lease so that renewals never
    wait for writes: every fenced write holds this row shared until it commits, and a new
    term's update waits for them, so no write of an old term lands after a new one began."""

    __tablename__ = "af_term"
    name: str = Field(primary_key=True, max_length=64)
    epoch: int = 0


class SecretRow(SQLModel, table=True):
    """A secret the factory's members share (the key that signs completion ids): made once
    by the first member, read by the others. Kept in the store, never in a file or a log."""

    __tablename__ = "af_secret"
    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=128)
    created_at: str = ""


class FeedbackRow(SQLModel, table=True):
    """A client's rating of one answer, keyed by the answer's completion id (a new rating
    of the same answer replaces the old), with the version that answered and optionally
    the text the answer should have been."""

    __tablename__ = "af_feedback"
    __table_args__ = (
        Index("ix_af_feedback_line_version_updated", "line", "version", "updated_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    completion_id: str = Field(unique=True, max_length=128)
    line: str = Field(max_length=64)
    version: int
    routed: bool = True  # False: the client pinned the version (no evidence for a canary)
    rating: float
    correction: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: str = ""
    updated_at: str = ""


class CaptureRow(SQLModel, table=True):
    """A served prompt kept as training data (redacted before it was written), once per line
    and text. `batch` names the data file it went into (None: not yet)."""

    __tablename__ = "af_capture"
    __table_args__ = (UniqueConstraint("line", "sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    line: str = Field(index=True, max_length=64)
    version: int
    completion_id: str = Field(max_length=128)
    sha256: str = Field(max_length=64)
    text: str = Field(sa_column=Column(Text, nullable=False))
    size: int
    day: str = Field(max_length=10)
    captured_at: str = Field(index=True)
    batch: str | None = Field(default=None, max_length=128)


class LinePauseRow(SQLModel, table=True):
    """A line an operator paused: it starts no new cycle until resumed (the row is deleted).
    Cycles already running finish; serving goes on."""

    __tablename__ = "af_line_pause"
    policy_name: str = Field(primary_key=True, max_length=64)
    paused_by: str = Field(default="", max_length=128)
    reason: str = ""
    paused_at: str = ""
