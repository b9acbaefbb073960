"""One process at a time: the lock that names the leader among replicas sharing a database.

Alert evaluation and the rollout controller each run in one process only, whichever replica
holds the lock; the others stand by and take over when it goes.

On PostgreSQL, a session-level advisory lock (``pg_try_advisory_lock``) held on a connection
of its own for as long as this process leads; the server releases it when the connection or
the process dies, so another replica takes over at its next tick. On SQLite, whose processes
share one file on one machine, a lease row in ``alert_leases`` (the table is named for its
first user) renewed at every tick; another process takes it over once it expires.

>>> from stalwart.storage import Database
>>> db = Database("sqlite://")
>>> _ = db.migrate()
>>> lock = Leadership(db, "example", lock_id=42, lease_seconds=30)
>>> lock.lead()
True
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time

from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError

from stalwart.errors import StorageError
from stalwart.storage import tables as t
from stalwart.storage.database import Database

__all__ = ["Leadership", "process_holder"]


def process_holder() -> str:
    """A name for this process, unique across hosts and restarts: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:200]


class Leadership:
    """The lock named ``name`` (a lease row on SQLite) or ``lock_id`` (an advisory lock
    on PostgreSQL). ``lease_seconds``: how long a SQLite lease lasts unrenewed (make it a
    few ticks of the caller's loop); ``holder`` names this process in it."""

    def __init__(self, db: Database, name: str, *, lock_id: int, lease_seconds: float, holder: str | None = None) -> None:
        self.db = db
        self.name = name
        self.lock_id = lock_id
        self.lease_seconds = lease_seconds
        self.holder = holder or process_holder()
        self._pg_conn: Connection | None = None
        self._lock = threading.Lock()

    def lead(self, now: float | None = None) -> bool:
        """Whether this process leads now (taking the lock or lease if it is free, renewing
        it if held). A database error is "no": nobody leads on a database that cannot record
        what the leader decides."""
        with self._lock:
            try:
                if self.db.dialect == "postgresql":
                    return self._lead_pg()
                return self._lead_lease(time.time() if now is None else now)
            except (SQLAlchemyError, StorageError):
                self._drop_pg()
                return False

    def release(self) -> None:
        """Give up leadership (at shutdown), so another replica takes over at once."""
        with self._lock:
            if self.db.dialect == "postgresql":
                if self._pg_conn is not None:
                    # An error means the connection is gone, and the lock with it.
                    with contextlib.suppress(SQLAlchemyError):
                        self._pg_conn.exec_driver_sql(f"SELECT pg_advisory_unlock({self.lock_id})")
                self._drop_pg()
                return
            leases = t.alert_leases
            with contextlib.suppress(SQLAlchemyError, StorageError):  # else the lease expires on its own
                self.db.transact(lambda c: c.execute(leases.delete().where(leases.c.name == self.name, leases.c.holder == self.holder)))

    def _lead_pg(self) -> bool:
        if self._pg_conn is not None:
            # Still ours only while the session lives: a cheap round trip says whether it does.
            try:
                self._pg_conn.exec_driver_sql("SELECT 1").scalar()
                return True
            except SQLAlchemyError:
                self._drop_pg()
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({self.lock_id})").scalar())
        except SQLAlchemyError:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._pg_conn = conn
        return True

    def _drop_pg(self) -> None:
        if self._pg_conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._pg_conn.invalidate()  # never back into the pool: it may hold the lock
                self._pg_conn.close()
            self._pg_conn = None

    def _lead_lease(self, now: float) -> bool:
        leases = t.alert_leases

        def take(conn: Connection) -> bool:
            row = conn.execute(select(leases).where(leases.c.name == self.name)).one_or_none()
            expires = now + self.lease_seconds
            if row is None:
                conn.execute(leases.insert().values(name=self.name, holder=self.holder, expires_at=expires))
                return True
            if row.holder != self.holder and float(row.expires_at) > now:
                return False
            conn.execute(leases.update().where(leases.c.name == self.name).values(holder=self.holder, expires_at=expires))
            return True

        return self.db.transact(take)
