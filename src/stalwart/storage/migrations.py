"""Schema versioning: an ordered list of migrations, applied once, under a lock.

The schema version lives in ``stalwart_meta``. Opening a database applies every migration
newer than it, in one transaction that holds a lock (``BEGIN IMMEDIATE`` on SQLite, an
advisory lock on PostgreSQL), so N replicas starting together migrate exactly once. A
database written by a newer release is refused rather than misread.

To change the schema: append a migration; never edit one that has shipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Table, inspect, select

from stalwart.errors import SchemaVersionError
from stalwart.hashing import GENESIS, chain_hash
from stalwart.storage import tables

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "current_version", "migrate"]

# Any 64-bit number works; this one spells "stalwart" so it is recognisable in pg_locks.
_ADVISORY_LOCK_ID = 0x7374616C77617274 - (1 << 63)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create(*tbls: Table) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        for table in tbls:
            table.create(conn, checkfirst=True)

    return run


def _chain_audit_events(conn: Connection) -> None:
    """Add the audit log's hash columns and chain the events already there, oldest first.

    Events written before chaining existed are chained here rather than left outside the
    chain: from now on they cannot be changed unnoticed either (what was done to them
    before this migration ran is beyond what any hash can tell). Migration 1 creates the
    table from the current metadata, so on a new database the columns exist already.
    """
    audit = tables.audit_events
    present = {column["name"] for column in inspect(conn).get_columns(audit.name)}
    for column in ("prev_hash", "hash"):
        if column not in present:
            conn.exec_driver_sql(f"ALTER TABLE {audit.name} ADD COLUMN {column} VARCHAR(64)")
    prev, last_id = GENESIS, None
    for row in conn.execute(select(audit).order_by(audit.c.id)).all():
        digest = chain_hash(prev, tables.audit_payload(row._mapping))
        conn.execute(audit.update().where(audit.c.id == row.id).values(prev_hash=prev, hash=digest))
        prev, last_id = digest, int(row.id)
    if last_id is not None:
        head = json.dumps({"id": last_id, "hash": prev})
        conn.execute(tables.meta.insert().values(key=tables.AUDIT_HEAD_KEY, value=head))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "models, model versions and audit events",
        _create(tables.meta, tables.models, tables.model_versions, tables.audit_events),
    ),
    Migration(
        2,
        "model input schemas (revisions, active pointer) and training profiles",
        _create(tables.model_schemas, tables.model_schema_heads, tables.model_profiles),
    ),
    Migration(
        3,
        "the prediction log: one row per request, indexed for its queries, (chain, seq) unique",
        _create(tables.predictions),
    ),
    Migration(4, "the audit log's hash chain (prev_hash, hash; the head in stalwart_meta)", _chain_audit_events),
    Migration(5, "live profiles: per-minute, hour and day profile buckets per replica", _create(tables.profile_buckets)),
    Migration(6, "labels for logged predictions (feedback), indexed for the quality joins", _create(tables.feedback)),
    Migration(
        7,
        "alerts: state per (rule, column), transition history, the evaluator's lease",
        _create(tables.alert_states, tables.alert_history, tables.alert_leases),
    ),
    Migration(
        8,
        "rollouts: each deployment's run-time routes, rollouts and their events",
        _create(tables.deployment_routes, tables.rollouts, tables.rollout_events),
    ),
    Migration(9, "shadow pairs: per-minute paired reports of each shadow against the client's answers, per replica", _create(tables.shadow_pairs)),
    Migration(10, "model memory: each version's memory as last measured at load", _create(tables.model_memory)),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    if not conn.dialect.has_table(conn, tables.meta.name):
        return 0
    value = conn.execute(
        select(tables.meta.c.value).where(tables.meta.c.key == "schema_version")
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def migrate(conn: Connection) -> list[Migration]:
    """Bring the schema up to date inside the caller's write transaction.

    Returns the migrations applied (empty when the schema was current).
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_ID})")
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database is at schema version {found}, newer than this release "
            f"understands ({SCHEMA_VERSION}); upgrade stalwart to use it"
        )
    applied = [m for m in MIGRATIONS if m.version > found]
    for migration in applied:
        migration.apply(conn)
    if applied:
        _set_version(conn, SCHEMA_VERSION, first=found == 0)
    return applied


def _set_version(conn: Connection, version: int, *, first: bool) -> None:
    if first:
        conn.execute(tables.meta.insert().values(key="schema_version", value=str(version)))
    else:
        conn.execute(
            tables.meta.update()
            .where(tables.meta.c.key == "schema_version")
            .values(value=str(version))
        )
