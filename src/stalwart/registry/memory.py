"""Each model version's memory as last measured when a server loaded it.

A server measures how much its process grew while it loaded a version
(``stalwart.serving.residency``) and records it here, one row per version, the newest
measurement winning. The figure is an estimate (the process's RSS moved by the load,
after a garbage collection), good enough to plan a memory budget with: a server reads it
as the version's expected size before loading it again, and ``stalwart models list``
shows it.

>>> records = MemoryRecords(registry.db)             # doctest: +SKIP
>>> records.record("fraud", 3, 48_234_496, replica="host-1234")  # doctest: +SKIP
>>> records.get("fraud", 3).bytes                     # doctest: +SKIP
48234496
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select

from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = ["MemoryRecord", "MemoryRecords"]


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """A version's memory as one replica measured it when it loaded the version."""

    name: str
    version: int
    bytes: int
    measured_at: float  # seconds since the epoch
    replica: str


class MemoryRecords:
    """The ``model_memory`` table: the last measured memory of each model version."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, name: str, version: int, size: int, *, replica: str, at: float | None = None) -> None:
        """Keep ``size`` bytes as the version's memory (replacing an earlier measurement)."""
        when = time.time() if at is None else at
        table = t.model_memory
        values = {"bytes": int(size), "measured_at": when, "replica": replica[:200]}

        def write(conn: Connection) -> None:
            conn.execute(self.db.insert_ignoring_conflicts(table, name=name, version=version, **values))
            conn.execute(table.update().where(table.c.name == name, table.c.version == version).values(**values))

        self.db.transact(write)

    def get(self, name: str, version: int) -> MemoryRecord | None:
        """The version's last measurement, or None when no server has measured it."""
        table = t.model_memory
        with self.db.read() as conn:
            row = conn.execute(select(table).where(table.c.name == name, table.c.version == version)).first()
        return None if row is None else _record(row)

    def all(self) -> dict[tuple[str, int], MemoryRecord]:
        """Every measured version's last measurement, by ``(name, version)``."""
        with self.db.read() as conn:
            rows = conn.execute(select(t.model_memory)).all()
        return {(row.name, int(row.version)): _record(row) for row in rows}


def _record(row: Row[Any]) -> MemoryRecord:
    return MemoryRecord(
        name=str(row.name),
        version=int(row.version),
        bytes=int(row.bytes),
        measured_at=float(row.measured_at),
        replica=str(row.replica),
    )
