"""The registry's tables (and the prediction log's), as SQLAlchemy Core metadata.

One schema for SQLite and PostgreSQL. Timestamps are float seconds since the epoch: exact,
sortable and identical on both backends. Structured fields are JSON. The migrations in
``stalwart.storage.migrations`` create and evolve these tables; this module is the shape
the current code expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

meta = Table(
    "stalwart_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("latest_version", Integer, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("flavor", String(40), nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("artifact_file", String(300), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("signature", JSON, nullable=False),
    Column("flavor_options", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("trust", String(40), nullable=True),
    Column("training", JSON, nullable=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)

# The control plane's audit log, hash-chained (stalwart.registry.audit): each event's
# ``hash`` is over the previous event's hash and its own AUDIT_CHAINED columns, so an event
# changed, removed or moved by hand breaks the chain where it happened. The head of the
# chain (the last event's id and hash) is kept in ``stalwart_meta`` under AUDIT_HEAD_KEY, so
# removing the newest events shows too. ``hash`` is NULL only inside the transaction that
# appends the event (the hash covers the id, which the insert allocates).
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(80), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=True),
)

AUDIT_CHAINED = ("id", "at", "actor", "action", "subject", "detail")
AUDIT_HEAD_KEY = "audit_head"


def audit_payload(row: Mapping[Any, Any]) -> dict[str, Any]:
    """What an audit event's hash covers: its AUDIT_CHAINED columns, typed as written (a
    driver may hand back an integral REAL as an int; the hash must not depend on that)."""
    return {
        "id": int(row["id"]),
        "at": float(row["at"]),
        "actor": str(row["actor"]),
        "action": str(row["action"]),
        "subject": str(row["subject"]),
        "detail": row["detail"],
    }

# Input schemas of model versions: every revision kept (inferred from data, or edited by a
# person), and per version a head row that allocates revisions and says which one serves.
model_schemas = Table(
    "model_schemas",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("source", String(20), nullable=False),  # "inferred" | "edited"
    Column("body", JSON, nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(
        ["name", "version"], ["model_versions.name", "model_versions.version"], ondelete="CASCADE"
    ),
)

model_schema_heads = Table(
    "model_schema_heads",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("latest_revision", Integer, nullable=False),
    Column("active_revision", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    ForeignKeyConstraint(
        ["name", "version"], ["model_versions.name", "model_versions.version"], ondelete="CASCADE"
    ),
)

# Profiles of the data a version was trained on (what drift and skew compare against).
model_profiles = Table(
    "model_profiles",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kind", String(40), primary_key=True),  # "training"
    Column("rows", BigInteger, nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(
        ["name", "version"], ["model_versions.name", "model_versions.version"], ondelete="CASCADE"
    ),
)

# The prediction log (stalwart.monitoring.sinks.sql): one row per request. ``record`` is
# the record's JSON exactly as encoded (the hash chain is over it); the other columns are
# copies of its fields, there to be filtered on. Text columns have no length: a record the
# database refuses for a long name would block the log's spool forever.
predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String, primary_key=True),
    Column("time_ns", BigInteger, nullable=False),  # when the request arrived, ns since the epoch (UTC)
    Column("entrypoint", String, nullable=False),
    Column("deployment", String, nullable=True),
    Column("variant", String, nullable=True),
    Column("model", String, nullable=True),
    Column("version", Integer, nullable=True),
    Column("status", Integer, nullable=False),
    Column("error", String, nullable=True),
    Column("degraded", String, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("trace_id", String, nullable=True),
    Column("chain", String, nullable=True),
    Column("seq", BigInteger, nullable=True),
    Column("hash", String(64), nullable=True),
    Column("record", Text, nullable=False),
    Index("ix_predictions_time", "time_ns"),
    Index("ix_predictions_deployment_time", "deployment", "time_ns"),
    Index("ix_predictions_model_version_time", "model", "version", "time_ns"),
    UniqueConstraint("chain", "seq", name="uq_predictions_chain_seq"),
)

# Labels for logged predictions (stalwart.monitoring.feedback): one row per labelled
# prediction row. ``key`` makes a label idempotent: ``r:<request_id>:<row>`` for a label
# given by request id, ``e:<deployment>:<entity key>:<event time>`` for one given by
# entity and time; a label sent again under the same key replaces the stored one (the
# latest wins). ``request_id``/``row_index`` hold the prediction a label was matched to (NULL
# while an entity label has no match yet: the join is tried again on read). ``entity_key``
# is the entity's canonical JSON, so equal keys compare equal as text. Times are ns.
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String, nullable=False),
    Column("deployment", String, nullable=True),
    Column("request_id", String, nullable=True),
    Column("row_index", Integer, nullable=True),
    Column("entity_key", Text, nullable=True),
    Column("event_time_ns", BigInteger, nullable=True),
    Column("label", JSON, nullable=False),
    Column("received_at_ns", BigInteger, nullable=False),
    Column("actor", String, nullable=True),
    UniqueConstraint("key", name="uq_feedback_key"),
    Index("ix_feedback_request", "request_id"),
    Index("ix_feedback_deployment_entity_time", "deployment", "entity_key", "event_time_ns"),
    Index("ix_feedback_deployment_received", "deployment", "received_at_ns"),
)

# Alerts (stalwart.monitoring.alerts): the state of each (rule, column), so a restarted or
# newly elected evaluator neither re-fires what is firing nor forgets what is pending; every
# transition, in order; and the leases that name the one process leading (evaluating alerts,
# controlling rollouts: stalwart.storage.leadership) on SQLite; on PostgreSQL a session
# advisory lock does that job and the table stays empty.
alert_states = Table(
    "alert_states",
    metadata,
    Column("alert", String(200), primary_key=True),
    Column("column", String, primary_key=True),
    Column("deployment", String(200), nullable=False),
    Column("state", String(20), nullable=False),  # "inactive" | "pending" | "firing" | "resolved"
    Column("since", Float, nullable=False),  # when it entered this state
    Column("active_since", Float, nullable=True),  # pending or firing: when the condition began
    Column("value", Float, nullable=True),  # at the last change of this row
    Column("threshold", Float, nullable=True),
    Column("notified_state", String(20), nullable=True),  # the last state sent to webhooks
    Column("notified_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)

alert_history = Table(
    "alert_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("alert", String(200), nullable=False),
    Column("column", String, nullable=False),
    Column("deployment", String(200), nullable=False),
    Column("from_state", String(20), nullable=False),
    Column("to_state", String(20), nullable=False),
    Column("value", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("severity", String(20), nullable=False),
    Index("ix_alert_history_alert_at", "alert", "at"),
    Index("ix_alert_history_deployment_at", "deployment", "at"),
)

alert_leases = Table(
    "alert_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Rollouts (stalwart.rollout): each deployment's variants as they are now (``routes``: the
# primary, the canary and its weight, the shadows and their rates, the routing salt), which
# the CLI, the admin API and the controller change at run time and every replica polls by
# ``revision``; ``declared`` is the hash of the project file's declaration the row last took,
# so a changed project file resets the row and an unchanged one leaves run-time changes be.
deployment_routes = Table(
    "deployment_routes",
    metadata,
    Column("deployment", String(200), primary_key=True),
    Column("routes", JSON, nullable=False),
    Column("declared", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("actor", String(200), nullable=False),
)

# A canary rollout: its plan, where it stands, and the controller's running evidence (so a
# controller that dies is resumed by another from here); one running rollout per deployment.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment", String(200), nullable=False),
    Column("canary", String(200), nullable=False),  # "model:version"
    Column("primary", String(200), nullable=False),  # what the primary was when it started
    Column("salt", String(200), nullable=False),
    Column("plan", JSON, nullable=False),
    Column("state", String(20), nullable=False),  # running | paused | held | promoted | rolled_back
    Column("step", Integer, nullable=False),
    Column("weight", Float, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("step_started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("reason", Text, nullable=True),
    Column("evidence", JSON, nullable=True),
    Index("ix_rollouts_deployment_state", "deployment", "state"),
)

# Every look and decision of a rollout, in order, with its numbers (the rollout report's data).
rollout_events = Table(
    "rollout_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("step", Integer, nullable=False),
    Column("weight", Float, nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_rollout_events_rollout", "rollout_id", "id"),
)

# Live profiles (stalwart.monitoring.live_profiles): one serialised Profile per deployment,
# variant, model version, granularity ("minute", "hour", "day"), bucket and replica. Each
# replica writes only its own rows (merging into them when it writes a bucket again), so
# replicas never contend; readers merge across replicas and buckets. ``bucket_start`` is
# whole seconds since the epoch (UTC), a multiple of the granularity.
profile_buckets = Table(
    "profile_buckets",
    metadata,
    Column("deployment", String, primary_key=True),
    Column("variant", String, primary_key=True),
    Column("model", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("granularity", String(8), primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True),
    Column("replica", String, primary_key=True),
    Column("rows", BigInteger, nullable=False),
    Column("profile", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_profile_buckets_read", "deployment", "granularity", "bucket_start"),
    Index("ix_profile_buckets_retention", "granularity", "bucket_start"),
)

# Shadow pairs (stalwart.rollout.shadow_store): one serialised PairedReport per deployment,
# shadow, minute bucket and replica: the shadow's answers against the client's. Each
# replica writes only its own rows (merging into them when it writes a bucket again), as
# profile_buckets; readers merge across replicas and buckets. ``bucket_start`` is whole
# seconds since the epoch (UTC), a multiple of 60. ``models`` counts requests per side and
# model reference ({"primary": {"fraud:2": 120}, "shadow": {"fraud:3": 118}}).
shadow_pairs = Table(
    "shadow_pairs",
    metadata,
    Column("deployment", String, primary_key=True),
    Column("shadow", String, primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True),
    Column("replica", String, primary_key=True),
    Column("pairs", BigInteger, nullable=False),
    Column("models", JSON, nullable=False),
    Column("report", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_shadow_pairs_read", "deployment", "bucket_start"),
)

# Model memory (stalwart.registry.memory): each version's resident memory as last measured
# when a server loaded it (the growth of the process's RSS across the load, an estimate),
# by which replica and when. The serving memory budget reads it as the version's expected
# size before loading it again; ``stalwart models list`` shows it.
model_memory = Table(
    "model_memory",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("measured_at", Float, nullable=False),
    Column("replica", String(200), nullable=False),
)
