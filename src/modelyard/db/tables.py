"""Every ORM table of Modelyard, in one module so that domains can reference each other."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from modelyard.db.types import JSONType, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), uuid.UUID: Uuid()}


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- auth -------------------------------------------------------------------------------------


class User(Timestamped, Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(default=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    # Carried by every access token; raised by a password change, logout everywhere,
    # deactivation and every change of rights, which ends all tokens issued before it.
    credentials_version: Mapped[int] = mapped_column(default=0, server_default=text("0"))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # What the key may do (`auth.scopes.Scope` values) and the names of the only models it
    # may act on (None: every model).
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    model_names: Mapped[list[str] | None] = mapped_column(JSONType)


class RefreshToken(Base):
    """One issued refresh token; `id` is its `jti`. Rotation spends it, reuse revokes its family."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_family_id", "family_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class WebSession(Base):
    """A signed-in browser: the dashboard's cookie carries a secret whose SHA-256 is `token_hash`.

    Checked on every request: it ends at sign-out (`revoked_at`), at expiry, and when the user's
    credentials version moves on (password change, logout everywhere, deactivation, rights).
    """

    __tablename__ = "web_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    credentials_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SsoIdentity(Base):
    """A person at an OpenID provider (issuer and subject, never the email alone) and the
    account they sign in to; the groups claim of their last sign-in is kept for team roles."""

    __tablename__ = "sso_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    groups: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime] = mapped_column(default=utcnow)


class SsoHandoff(Base):
    """A one-time code that hands an SSO sign-in to the command line: the server finished the
    provider's flow, the CLI's loopback got this code, and the CLI spends it once, before it
    expires, with the PKCE verifier whose challenge it gave when it began."""

    __tablename__ = "sso_handoffs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    code_challenge: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


# --- registry ---------------------------------------------------------------------------------


class RegisteredModel(Timestamped, Base):
    """A model name owned by a user; each upload under it adds a `ModelVersion`."""

    __tablename__ = "registered_models"
    __table_args__ = (
        UniqueConstraint("owner_id", "name"),
        Index("ix_registered_models_owner_id_created_at", "owner_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    task_type: Mapped[str | None] = mapped_column(String(32))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")
    # Bumped with UPDATE ... RETURNING in the upload transaction: the race-free version number.
    version_count: Mapped[int] = mapped_column(Integer, default=0)


class ModelVersion(Timestamped, Base):
    """One uploaded artifact of a model, numbered 1, 2, 3, ... per model and never reused."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        # At most one production version per model, whatever the races between promotions.
        Index(
            "uq_model_versions_one_production",
            "model_id",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
        Index("ix_model_versions_stage", "stage"),
        Index("ix_model_versions_framework", "framework"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16), default="development")
    framework: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    task_type: Mapped[str | None] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(512), unique=True)
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    input_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metrics: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # `metadata` is taken by SQLAlchemy's declarative base: the attribute gets a trailing _.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    experiment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )

    model: Mapped[RegisteredModel] = relationship(lazy="raise")

    @property
    def model_name(self) -> str:
        return self.model.name


class ModelAlias(Timestamped, Base):
    """A name such as `champion` pointing at one version of a model."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )


# --- experiments ------------------------------------------------------------------------------


class Experiment(Timestamped, Base):
    """A training run or study: parameters, tags, metric history, the versions it produced."""

    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")
    # Set when the status leaves `running`, cleared if it goes back.
    ended_at: Mapped[datetime | None]


class ExperimentMetric(Base):
    """One point of a metric's history: (key, value, step, timestamp)."""

    __tablename__ = "experiment_metrics"
    __table_args__ = (
        Index("ix_experiment_metrics_experiment_id_key_step", "experiment_id", "key", "step"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


# --- predictions ------------------------------------------------------------------------------


class Prediction(Base):
    """One logged prediction request, success or failure; written by the background log writer.

    No foreign keys: the log is append-only and outlives what it mentions, and a spooled row must
    replay even if its model is gone. `owner_id` (the model's owner) makes "predictions on my
    models" one indexed lookup.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_model_id_created_at", "model_id", "created_at"),
        Index("ix_predictions_user_id_created_at", "user_id", "created_at"),
        Index("ix_predictions_owner_id_created_at", "owner_id", "created_at"),
        Index("ix_predictions_created_at", "created_at"),
        # Failures are few: `status=error` lists walk these small indexes, not every row.
        *(
            Index(
                f"ix_predictions_{column}_created_at_errors",
                column,
                "created_at",
                postgresql_where=text("status = 'error'"),
                sqlite_where=text("status = 'error'"),
            )
            for column in ("model_id", "user_id", "owner_id")
        ),
        # A caller's calls on models it does not own: the second half of what it may see. Most
        # calls are an owner's own, and walking them all to skip them cost seconds at 1 M rows.
        Index(
            "ix_predictions_user_id_created_at_foreign",
            "user_id",
            "created_at",
            postgresql_where=text("owner_id IS DISTINCT FROM user_id"),
            sqlite_where=text("owner_id IS NOT user_id"),
        ),
        # On PostgreSQL one partition a UTC day (and a default one), in the schema
        # prediction_partitions; made ahead and dropped past retention by
        # modelyard.predictions.log.maintenance. SQLite keeps one table.
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    # A partitioned table's key must hold the partition column: (id, created_at) on PostgreSQL.
    # SQLite's table keeps `id` alone (the migrations do not rebuild it).
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    model_id: Mapped[uuid.UUID | None]
    version_id: Mapped[uuid.UUID | None]
    version: Mapped[int | None]
    owner_id: Mapped[uuid.UUID | None]
    user_id: Mapped[uuid.UUID | None]
    api_key_id: Mapped[uuid.UUID | None]
    protocol: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[Any | None] = mapped_column(JSONType)
    outputs: Mapped[Any | None] = mapped_column(JSONType)
    n_rows: Mapped[int] = mapped_column(Integer, default=0)
    inference_time_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, primary_key=True)
    # A shadow prediction: a sampled copy of the primary prediction `shadow_of`, made by the
    # traffic policy's shadow version after the caller was answered. Compared with the primary:
    # `agreed_rows` (classifiers: rows with the same label) or `abs_diff_sum` (regressors: the
    # rows' absolute differences, summed). Analytics of primary traffic leave shadows out.
    shadow: Mapped[bool] = mapped_column(server_default=text("false"))
    shadow_of: Mapped[uuid.UUID | None]
    agreed_rows: Mapped[int | None] = mapped_column(Integer)
    abs_diff_sum: Mapped[float | None] = mapped_column(Float)


# The latency distribution of prediction_rollups: counts in fixed, log-spaced buckets (see
# modelyard.predictions.log.rollups for the boundaries and the percentile error they give).
ROLLUP_BUCKETS = 90


def rollup_bucket_column(index: int) -> str:
    """Name the column holding the count of bucket `index` of a rollup's latency distribution."""
    return f"b{index:02d}"


# A Core table rather than a mapped class: ninety counters read and written by name, never as
# objects. One row per model version and period (60 s, 3600 s or 86400 s) starting at `start_at`.
prediction_rollups = Table(
    "prediction_rollups",
    Base.metadata,
    Column("period_s", Integer, primary_key=True),
    Column("start_at", UTCDateTime(), primary_key=True),
    Column("model_id", Uuid(), primary_key=True),
    # The nil UUID for failures logged before a version was resolved: a key cannot hold NULL.
    Column("version_id", Uuid(), primary_key=True),
    Column("owner_id", Uuid(), nullable=True),
    Column("version", Integer, nullable=True),
    Column("requests", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("timed", BigInteger, nullable=False),
    Column("time_sum_ms", Float, nullable=False),
    Column("time_min_ms", Float, nullable=True),
    Column("time_max_ms", Float, nullable=True),
    Column("last_at", UTCDateTime(), nullable=False),
    *(Column(rollup_bucket_column(i), BigInteger, nullable=False) for i in range(ROLLUP_BUCKETS)),
    Index("ix_prediction_rollups_owner_id_period_s_start_at", "owner_id", "period_s", "start_at"),
    # One model's analytics (its page, `?model_id=`) without reading every model's rollups.
    Index("ix_prediction_rollups_model_id_period_s_start_at", "model_id", "period_s", "start_at"),
)


# Shadow predictions, per model version (the shadow's) and period as `prediction_rollups`: how
# many, how many failed, their time (with the same latency buckets), and how they compared with
# the primary predictions.
shadow_rollups = Table(
    "shadow_rollups",
    Base.metadata,
    Column("period_s", Integer, primary_key=True),
    Column("start_at", UTCDateTime(), primary_key=True),
    Column("model_id", Uuid(), primary_key=True),
    Column("version_id", Uuid(), primary_key=True),
    Column("owner_id", Uuid(), nullable=True),
    Column("version", Integer, nullable=True),
    Column("requests", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
    Column("timed", BigInteger, nullable=False),
    Column("time_sum_ms", Float, nullable=False),
    Column("time_min_ms", Float, nullable=True),
    Column("time_max_ms", Float, nullable=True),
    *(Column(rollup_bucket_column(i), BigInteger, nullable=False) for i in range(ROLLUP_BUCKETS)),
    # Rows compared by label (classifiers), and of those the rows whose labels agreed.
    Column("label_rows", BigInteger, nullable=False),
    Column("agreed_rows", BigInteger, nullable=False),
    # Rows compared by value (regressors), and their absolute differences summed.
    Column("value_rows", BigInteger, nullable=False),
    Column("abs_diff_sum", Float, nullable=False),
    Column("last_at", UTCDateTime(), nullable=False),
    Index("ix_shadow_rollups_model_id_period_s_start_at", "model_id", "period_s", "start_at"),
)


# --- traffic ----------------------------------------------------------------------------------


class TrafficPolicy(Timestamped, Base):
    """How a model's requests that name no version are split between versions, and its shadow.

    `routes` is `[{"target": "production", "weight": 90}, ...]`; a target is a stage, an alias,
    `latest` or `v<N>`, resolved when the policy is read for serving. `shadow` is
    `{"target": "v4", "sample_rate": 0.1}` or None.
    """

    __tablename__ = "traffic_policies"

    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), primary_key=True
    )
    routes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


# --- files area usage (#23) -------------------------------------------------------------------


class StoredFile(Base):
    """One file of a person's file area and its size, or (`path` None) the bytes an upload or
    job output holds while it is being stored: what the storage quota sums (see
    modelyard.files.quota), so that usage is known without listing the store."""

    __tablename__ = "stored_files"
    __table_args__ = (UniqueConstraint("owner_id", "path"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    path: Mapped[str | None] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- drift ------------------------------------------------------------------------------------


class FeatureReference(Base):
    """What a version's input features looked like when it was trained or first served.

    One row per version, computed once (see modelyard.drift): `features` lists each feature's
    name with its summary (count, mean, std, range, decile cuts with their proportions, a
    bounded sample for the two-sample test) or the reason it is not compared, in schema order.
    """

    __tablename__ = "feature_references"

    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(16))  # "file" | "served"
    source_path: Mapped[str | None] = mapped_column(String(1024))
    row_count: Mapped[int] = mapped_column(BigInteger)
    features: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )


# --- batch jobs -------------------------------------------------------------------------------


class BatchJob(Base):
    """A file of rows scored by a model version in the background (see modelyard.jobs).

    The row is the truth about the job in both worker modes: status and progress, and the
    lease of the worker running it. `rows_done` and `parts_done` move together, in one UPDATE
    per chunk after the chunk's part object is stored, so a resumed job knows exactly which
    input rows are scored and which part objects hold them.
    """

    __tablename__ = "batch_jobs"
    __table_args__ = (
        Index("ix_batch_jobs_owner_id_created_at", "owner_id", "created_at"),
        # Workers look for queued jobs and for running ones whose lease lapsed.
        Index("ix_batch_jobs_status_lease_until", "status", "lease_until"),
        # The fair pick asks when each waiting account's last job started (jobs.service).
        Index("ix_batch_jobs_owner_id_started_at", "owner_id", "started_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None]
    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(128))
    # The version resolved when the job was created: a promotion meanwhile changes nothing.
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    input_path: Mapped[str] = mapped_column(String(1024))
    output_path: Mapped[str] = mapped_column(String(1024))
    format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_total: Mapped[int | None] = mapped_column(BigInteger)
    parts_done: Mapped[int] = mapped_column(Integer, default=0)
    inference_time_ms: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The run holding the job, and until when: renewed while it runs, taken over once past.
    worker_token: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


# --- audit ------------------------------------------------------------------------------------


class AuditEvent(Base):
    """One recorded action, hash-chained to the one before it (see modelyard.audit).

    Append-only and without foreign keys: the record outlives the users, keys and models it
    names (an erased account's rows keep its id, and nothing else about the person).
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_owner_id_seq", "owner_id", "seq"),
        Index("ix_audit_events_actor_user_id_seq", "actor_user_id", "seq"),
        Index("ix_audit_events_model_id_seq", "model_id", "seq"),
        Index("ix_audit_events_action_seq", "action", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    actor_user_id: Mapped[uuid.UUID | None]
    actor_api_key_id: Mapped[uuid.UUID | None]
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(1100))
    owner_id: Mapped[uuid.UUID | None]
    model_id: Mapped[uuid.UUID | None]
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[Any] = mapped_column(JSONType)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# --- webhooks ---------------------------------------------------------------------------------


class Webhook(Timestamped, Base):
    """A user's subscription: registry events of theirs (of one model, or all) POSTed to `url`.

    `secret` signs every delivery (Standard Webhooks); it is shown once, when made or rotated,
    and is stored as given because signing needs it.
    """

    __tablename__ = "webhooks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    # The event types it wants (`webhooks.schemas.EventType` values).
    events: Mapped[list[str]] = mapped_column(JSONType)
    # Only this model's events; None: every model of the user.
    model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(String(500))
    is_active: Mapped[bool] = mapped_column(default=True)


class WebhookDelivery(Base):
    """One event to deliver to one webhook, and how its delivery went.

    `id` is the message id the receiver sees (`webhook-id`), the same on every attempt. A worker
    takes a due row by setting `claimed_until` in one conditional UPDATE, so that no two
    processes send it at once; it clears it when it records the outcome.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # What the workers look for: pending rows that are due.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # A webhook's delivery log, newest first.
        Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None]
    response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]


# --- teams ------------------------------------------------------------------------------------


class Team(Timestamped, Base):
    """A group of users sharing what it owns, each member with a role (`teams.roles.Role`).

    `protected_stages` and `protected_aliases` are the stages and aliases that only a
    maintainer may move a version to; with `require_approval`, a second maintainer approves it.
    """

    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    require_approval: Mapped[bool] = mapped_column(default=False)
    protected_stages: Mapped[list[str]] = mapped_column(JSONType)
    protected_aliases: Mapped[list[str]] = mapped_column(JSONType)


class TeamMember(Base):
    __tablename__ = "team_members"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    # Indexed: "the teams of this user" is asked whenever a caller is resolved.
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeamInvitation(Base):
    """An invitation of an email address to a team: whoever signs in with that address and holds
    the invitation's secret (shown once, stored as its SHA-256) joins with `role`."""

    __tablename__ = "team_invitations"
    __table_args__ = (UniqueConstraint("team_id", "email"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
