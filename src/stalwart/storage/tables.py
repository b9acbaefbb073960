"""The registry's tables, as SQLAlchemy Core metadata.

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
    Integer,
    MetaData,
    String,
    Table,
    Text,
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
