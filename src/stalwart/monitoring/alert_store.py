"""Where alert state lives: one row per (rule, column), every transition, and the lock
that lets one process evaluate.

State is in the database, not in memory, so a restarted evaluator, or another replica that
takes over, continues where the last one stopped: a firing alert stays firing without being
sent again, a pending one keeps the time its condition began.

Leadership: one process evaluates, the holder of a database lock
(:class:`~stalwart.storage.leadership.Leadership`: an advisory lock on PostgreSQL, a lease
row on SQLite); another replica takes over when it goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from stalwart.storage import Database
from stalwart.storage import tables as t
from stalwart.storage.leadership import Leadership

__all__ = ["AlertStore", "StateRow", "TransitionRow"]

# Any 64-bit number works; this one spells "stalalrt", recognisable in pg_locks.
_LOCK_ID = 0x7374616C616C7274 - (1 << 63)
_LEASE = "alerts"


@dataclass(frozen=True, slots=True)
class StateRow:
    """The stored state of one (rule, column)."""

    alert: str
    column: str
    deployment: str
    state: str
    since: float
    active_since: float | None = None
    value: float | None = None
    threshold: float | None = None
    notified_state: str | None = None
    notified_at: float | None = None


@dataclass(frozen=True, slots=True)
class TransitionRow:
    """One change of state, as the history records it."""

    at: float
    alert: str
    column: str
    deployment: str
    from_state: str
    to_state: str
    value: float | None
    threshold: float | None
    severity: str


class AlertStore:
    """Alert state and history in the registry's database, and the evaluator's lock."""

    def __init__(self, db: Database, *, lease_seconds: float = 180.0, holder: str | None = None) -> None:
        """``lease_seconds``: how long a SQLite lease lasts unrenewed (make it a few
        evaluation intervals); ``holder`` names this process in it."""
        self.db = db
        self._leadership = Leadership(db, _LEASE, lock_id=_LOCK_ID, lease_seconds=lease_seconds, holder=holder)
        self.lease_seconds = lease_seconds
        self.holder = self._leadership.holder

    # -- leadership --------------------------------------------------------------------

    def lead(self, now: float | None = None) -> bool:
        """Whether this process is the one evaluator now (:meth:`Leadership.lead`)."""
        return self._leadership.lead(now)

    def release(self) -> None:
        """Give up leadership (at shutdown), so another replica takes over at once."""
        self._leadership.release()

    # -- state -------------------------------------------------------------------------

    def load(self, alerts: Iterable[str]) -> dict[tuple[str, str], StateRow]:
        """The stored state of every column of the named rules."""
        names = list(alerts)
        if not names:
            return {}
        states = t.alert_states
        with self.db.read() as conn:
            rows = conn.execute(select(states).where(states.c.alert.in_(names))).all()
        return {
            (row.alert, row.column): StateRow(
                alert=row.alert, column=row.column, deployment=row.deployment, state=row.state,
                since=float(row.since), active_since=_float(row.active_since), value=_float(row.value),
                threshold=_float(row.threshold), notified_state=row.notified_state, notified_at=_float(row.notified_at),
            )
            for row in rows
        }

    def save(
        self,
        rows: Sequence[StateRow],
        transitions: Sequence[TransitionRow],
        also: Callable[[Connection], None] | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Write states and transitions in one transaction, with ``also(conn)`` (the audit
        events of the same transitions) inside it: all of it is recorded, or none."""
        if not rows and not transitions:
            return
        stamp = time.time() if now is None else now
        states, history = t.alert_states, t.alert_history

        def write(conn: Connection) -> None:
            for row in rows:
                values = {
                    "deployment": row.deployment, "state": row.state, "since": row.since,
                    "active_since": row.active_since, "value": _finite(row.value), "threshold": _finite(row.threshold),
                    "notified_state": row.notified_state, "notified_at": row.notified_at, "updated_at": stamp,
                }
                key = (states.c.alert == row.alert) & (states.c.column == row.column)
                if conn.execute(states.update().where(key).values(**values)).rowcount == 0:
                    conn.execute(states.insert().values(alert=row.alert, column=row.column, **values))
            if transitions:
                conn.execute(history.insert(), [
                    {
                        "at": tr.at, "alert": tr.alert, "column": tr.column, "deployment": tr.deployment,
                        "from_state": tr.from_state, "to_state": tr.to_state, "value": _finite(tr.value),
                        "threshold": _finite(tr.threshold), "severity": tr.severity,
                    }
                    for tr in transitions
                ])
            if also is not None:
                also(conn)

        self.db.transact(write)

    def history(self, alert: str | None = None, *, limit: int = 1000) -> list[TransitionRow]:
        """Recorded transitions, oldest first (of one rule, or all), at most ``limit``."""
        history = t.alert_history
        query = select(history).order_by(history.c.id.desc()).limit(max(1, min(limit, 100_000)))
        if alert is not None:
            query = query.where(history.c.alert == alert)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            TransitionRow(
                at=float(r.at), alert=r.alert, column=r.column, deployment=r.deployment, from_state=r.from_state,
                to_state=r.to_state, value=_float(r.value), threshold=_float(r.threshold), severity=r.severity,
            )
            for r in reversed(rows)
        ]


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _finite(value: float | None) -> float | None:
    # NaN and infinity are not portable SQL values (PostgreSQL takes them, JSON and SQLite
    # round trips do not agree); an unknown value is NULL.
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return value
