"""The audit log: who changed the control plane, when, and what, in a hash chain.

Every event (a model registered, a schema attached or activated, source rows written,
cached features invalidated, the server started with new settings, and whatever later
code records through :meth:`Registry.audit <stalwart.registry.Registry.audit>`) is one row
of ``audit_events``. Each row carries the previous row's hash and its own,
``sha256(prev_hash + canonical JSON of (id, at, actor, action, subject, detail))``
(:mod:`stalwart.hashing`), and ``stalwart_meta`` keeps the chain's head (the newest id and
hash). :func:`verify_audit` recomputes the chain and names the first event that was
changed, removed or moved; removing the newest events shows as a head that points past
the last row.

What the chain proves, and what not: an edit made with SQL, without recomputing every
later hash and the head, is found. Someone who can write the database *and* recomputes the
chain can rewrite history; against that, keep the head hash that ``stalwart audit verify``
prints somewhere they cannot write.

Appending holds the log's write lock for the rest of the caller's transaction: on SQLite
the transaction's own ``BEGIN IMMEDIATE``, on PostgreSQL a transaction-level advisory lock,
so concurrent writers (threads, processes, replicas) make one chain, never a fork.

>>> with registry.db.write() as conn:                                          # doctest: +SKIP
...     append_event(conn, "alice", "rollout.weight", "fraud", {"canary": 0.05})
>>> verify_audit(registry.db) is None                                          # doctest: +SKIP
True
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretBytes, SecretStr
from sqlalchemy import Connection, Row, func, or_, select

from stalwart.config import Settings
from stalwart.hashing import GENESIS, canonical_json, chain_hash, normalise
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = [
    "CONFIG_ACTION",
    "AuditBreak",
    "AuditCheck",
    "AuditEvent",
    "append_event",
    "check_audit",
    "process_actor",
    "query_events",
    "record_settings",
    "settings_view",
    "verify_audit",
]

CONFIG_ACTION = "server.config"

# Any 64-bit number works; this one spells "stalaudt", recognisable in pg_locks and apart
# from the migrations' lock.
_LOCK_ID = 0x7374616C61756474 - (1 << 63)
# When a chain breaks, how many other broken rows are tried as a moved row's true place.
_MOVE_CANDIDATES = 10_000


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the audit log."""

    id: int
    at: float
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str | None
    hash: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": self.at, "actor": self.actor, "action": self.action,
            "subject": self.subject, "detail": self.detail, "prev_hash": self.prev_hash, "hash": self.hash,
        }


Problem = Literal["changed", "removed", "reordered", "unlinked"]


@dataclass(frozen=True, slots=True)
class AuditBreak:
    """The first place the audit chain is not intact: the event, and what happened to it."""

    event_id: int
    problem: Problem
    message: str

    def describe(self) -> str:
        return f"audit event {self.event_id} {self.problem}: {self.message}"


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """What :func:`check_audit` found: how many events, the head hash, the first break."""

    events: int
    head: str | None
    broken: AuditBreak | None


def process_actor() -> str:
    """``user@host`` of this process: the actor of changes made outside HTTP (a training
    script, the CLI), where no bearer token names anyone."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        # No LOGNAME/USER and no passwd entry (a container's arbitrary uid).
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:200]


def append_event(
    conn: Connection,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any],
    *,
    at: float | None = None,
) -> AuditEvent:
    """Append one event inside the caller's write transaction (``Database.write`` or
    ``transact``), linked to the chain's head; the event commits with the caller's change
    or not at all. ``detail`` is stored as it reads back from JSON (NaN as null)."""
    _lock(conn)
    head = _head(conn)
    prev_hash = head[1] if head is not None else GENESIS
    audit = t.audit_events
    values: dict[str, Any] = {
        "at": time.time() if at is None else float(at),
        "actor": actor[:200],
        "action": action,
        "subject": subject,
        "detail": normalise(dict(detail)),
    }
    # The hash covers the id, which only the insert allocates: insert, then fill it in.
    event_id = int(conn.execute(audit.insert().values(prev_hash=prev_hash, **values).returning(audit.c.id)).scalar_one())
    digest = chain_hash(prev_hash, t.audit_payload({"id": event_id, **values}))
    conn.execute(audit.update().where(audit.c.id == event_id).values(hash=digest))
    _set_head(conn, event_id, digest)
    return AuditEvent(id=event_id, prev_hash=prev_hash, hash=digest, **values)


def query_events(
    db: Database,
    *,
    action: str | None = None,
    subject: str | None = None,
    actor: str | None = None,
    since: float | None = None,
    limit: int | None = 100,
) -> list[AuditEvent]:
    """Events newest first, each filter given holding: ``subject`` matches exactly, or as
    a model name (``churn`` matches ``churn:3``); ``since`` is seconds since the epoch."""
    audit = t.audit_events
    query = select(audit).order_by(audit.c.id.desc())
    if action is not None:
        query = query.where(audit.c.action == action)
    if actor is not None:
        query = query.where(audit.c.actor == actor)
    if subject is not None:
        prefix = f"{subject}:"
        query = query.where(or_(audit.c.subject == subject, func.substr(audit.c.subject, 1, len(prefix)) == prefix))
    if since is not None:
        query = query.where(audit.c.at >= since)
    if limit is not None:
        query = query.limit(limit)
    with db.read() as conn:
        return [_event(row) for row in conn.execute(query).all()]


def check_audit(db: Database) -> AuditCheck:
    """Recompute the whole chain against its head, in one consistent snapshot."""
    with db.snapshot() as conn:
        head = _head(conn)
        count = int(conn.execute(select(func.count()).select_from(t.audit_events)).scalar_one())
        broken = _walk(conn, head)
    return AuditCheck(count, head[1] if head is not None else None, broken)


def verify_audit(db: Database) -> AuditBreak | None:
    """The first event that was changed, removed or moved; None when the log is intact."""
    return check_audit(db).broken


def settings_view(settings: Settings) -> dict[str, Any]:
    """The settings as the audit log records them: every field but the secrets (those
    typed ``SecretStr``, in any container), URLs without a password, and the names (never
    the values) of the named admin tokens."""
    secret = {name for name, field in type(settings).model_fields.items() if _holds_secret(field.annotation)}
    view: dict[str, Any] = settings.model_dump(mode="json", exclude=secret)
    for name, value in view.items():
        if isinstance(value, str):
            view[name] = _without_password(value)
    view["admin_token_names"] = ["admin", *sorted(settings.admin_tokens)]
    return view


def record_settings(db: Database, settings: Settings, actor: str | None = None) -> AuditEvent | None:
    """Record the settings a server starts with, unless the last recorded ones are the
    same (compared by digest, under the log's lock, so replicas starting together with one
    configuration record it once). Returns the new event, or None."""
    view = settings_view(settings)
    digest = hashlib.sha256(canonical_json(view)).hexdigest()
    who = actor if actor is not None else process_actor()

    def record(conn: Connection) -> AuditEvent | None:
        _lock(conn)
        audit = t.audit_events
        last = conn.execute(
            select(audit.c.detail).where(audit.c.action == CONFIG_ACTION).order_by(audit.c.id.desc()).limit(1)
        ).scalar_one_or_none()
        if isinstance(last, Mapping) and last.get("digest") == digest:
            return None
        return append_event(conn, who, CONFIG_ACTION, "server", {"digest": digest, "settings": view})

    return db.transact(record)


# -- the chain ---------------------------------------------------------------------------


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
    # SQLite: the caller's write transaction began with BEGIN IMMEDIATE, which already
    # holds the database's one write lock.


def _head(conn: Connection) -> tuple[int, str] | None:
    value = conn.execute(select(t.meta.c.value).where(t.meta.c.key == t.AUDIT_HEAD_KEY)).scalar_one_or_none()
    if value is None:
        return None
    try:
        parsed = json.loads(value)
        return int(parsed["id"]), str(parsed["hash"])
    except (ValueError, KeyError, TypeError):
        # An edited head is a broken chain, reported by the walk; it never stops appends
        # with a traceback (they link to whatever it says, and verification names it).
        return -1, str(value)[:64]


def _set_head(conn: Connection, event_id: int, digest: str) -> None:
    value = json.dumps({"id": event_id, "hash": digest})
    meta = t.meta
    updated = conn.execute(meta.update().where(meta.c.key == t.AUDIT_HEAD_KEY).values(value=value))
    if updated.rowcount == 0:
        conn.execute(meta.insert().values(key=t.AUDIT_HEAD_KEY, value=value))


def _rows(conn: Connection) -> Generator[Row[Any], None, None]:
    audit = t.audit_events
    # Streamed: a long log is verified in bounded memory.
    result = conn.execution_options(yield_per=1000).execute(select(audit).order_by(audit.c.id))
    try:
        yield from result
    finally:
        result.close()  # PostgreSQL streams through a server-side cursor: close it now


def _intact(row: Row[Any], event_id: int | None = None) -> bool:
    """Whether the row's hash matches its content (as event ``event_id``, if given)."""
    if row.hash is None or row.prev_hash is None:
        return False
    payload = t.audit_payload(row._mapping)
    if event_id is not None:
        payload["id"] = event_id
    return bool(chain_hash(row.prev_hash, payload) == row.hash)


def _walk(conn: Connection, head: tuple[int, str] | None) -> AuditBreak | None:
    prev_hash, prev_id = GENESIS, None
    broken: tuple[Row[Any], Literal["content", "link"]] | None = None
    rows = _rows(conn)
    try:
        for row in rows:
            if not _intact(row):
                broken = row, "content"
                break
            if row.prev_hash != prev_hash:
                broken = row, "link"
                break
            prev_hash, prev_id = row.hash, int(row.id)
    finally:
        rows.close()  # the stream ends before the queries that explain a break
    if broken is None:
        return _check_head(head, prev_id, prev_hash)
    row, kind = broken
    event_id = int(row.id)
    if kind == "content":
        written_as = _moved_from(conn, row)
        if written_as is not None:
            return AuditBreak(event_id, "reordered", f"it holds the event written as {written_as}: rows were swapped or renumbered")
        what = "it has no hash" if row.hash is None else "its content no longer matches its hash"
        return AuditBreak(event_id, "changed", f"{what} ({_summary(row)}): it was edited after it was written")
    after = "the start of the log" if prev_id is None else f"event {prev_id}"
    owner = conn.execute(select(t.audit_events.c.id).where(t.audit_events.c.hash == row.prev_hash)).scalar_one_or_none()
    if owner is None:
        return AuditBreak(event_id, "removed", f"the event before it, after {after}, is missing: it was removed")
    return AuditBreak(event_id, "reordered", f"it follows event {owner} in the chain, not {after}: rows were moved")


def _check_head(head: tuple[int, str] | None, last_id: int | None, last_hash: str) -> AuditBreak | None:
    if head is None:
        if last_id is None:
            return None
        return AuditBreak(last_id, "removed", f"the log's head (stalwart_meta '{t.AUDIT_HEAD_KEY}') was removed")
    head_id, head_hash = head
    if (head_id, head_hash) == (last_id, last_hash):
        return None
    if head_id == -1:
        return AuditBreak(last_id or 0, "changed", f"the log's head (stalwart_meta '{t.AUDIT_HEAD_KEY}') was edited")
    if last_id is None or head_id > last_id:
        after = "every event" if last_id is None else f"the events after event {last_id}"
        return AuditBreak(head_id, "removed", f"it was the newest event, and it is gone: {after} were removed")
    if head_id < last_id:
        return AuditBreak(last_id, "unlinked", f"events after event {head_id}, the chain's head, were added outside the chain")
    return AuditBreak(head_id, "changed", "the log's head records another hash for it: it or the head was edited")


def _moved_from(conn: Connection, row: Row[Any]) -> int | None:
    """The id under which a broken row's content is intact, among the other broken rows
    (a swap of two rows' ids breaks exactly those two); None when there is none."""
    candidates: list[int] = []
    rows = _rows(conn)
    try:
        for other in rows:
            if int(other.id) != int(row.id) and not _intact(other):
                candidates.append(int(other.id))
                if len(candidates) >= _MOVE_CANDIDATES:
                    break
    finally:
        rows.close()
    return next((c for c in candidates if _intact(row, c)), None)


def _summary(row: Row[Any]) -> str:
    return f"{row.action} {row.subject} by {row.actor}"


def _event(row: Row[Any]) -> AuditEvent:
    return AuditEvent(
        id=int(row.id), at=float(row.at), actor=row.actor, action=row.action, subject=row.subject,
        detail=dict(row.detail or {}), prev_hash=row.prev_hash, hash=row.hash,
    )


# -- settings ----------------------------------------------------------------------------


def _holds_secret(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_holds_secret(arg) for arg in get_args(annotation))


def _without_password(value: str) -> str:
    """A URL-looking value with its password replaced (``nats://u:p@h`` -> ``nats://u:***@h``):
    settings typed as plain strings can still carry credentials."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if password is None:
        return value
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
