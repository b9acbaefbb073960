"""Shadow pairs in the database: written per replica and minute, merged on read.

Each replica writes its own rows of ``shadow_pairs``, one per deployment, shadow and minute
bucket (:func:`write_buckets`), as live profiles write ``profile_buckets``: a bucket written
again (the server flushes every few seconds, so the current minute is written several
times) is merged into the stored row, in the same transaction, so only this replica ever
writes its rows and no lock between replicas is needed. Readers
(:func:`read_pairs`) merge every replica's rows over a time range into one
:class:`~stalwart.rollout.paired.PairedReport` per shadow, which is the report one process
would have built over the same pairs (exact for counts and moments; quantiles within the
KLL sketch's rank error), and keep per-minute counts for plots over time.

>>> found = read_pairs(db, "fraud", since=time.time() - 3600)     # doctest: +SKIP
>>> found["next"].report.agreement                                # doctest: +SKIP
0.987
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from stalwart.durations import epoch_span
from stalwart.errors import ConfigError
from stalwart.rollout.paired import PairedReport
from stalwart.rollout.shadow_pairs import Bucket, BucketKey, merge_models
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = ["MAX_ROWS_READ", "MinutePairs", "ShadowPairs", "read_pairs", "replica_name", "write_buckets"]

MAX_ROWS_READ = 200_000
"""Rows one read may merge (a row per replica, shadow and minute): narrow the range past it."""


@dataclass(slots=True)
class MinutePairs:
    """One minute's counts for one shadow, summed over replicas."""

    start: int  # seconds since the epoch (UTC), a multiple of 60
    pairs: int = 0
    labelled: int = 0
    agreed: int = 0
    errors_primary: int = 0
    errors_shadow: int = 0
    scored: int = 0
    difference_sum: float = 0.0  # sum of shadow - primary over the scored pairs

    def add(self, report: PairedReport) -> None:
        self.pairs += report.pairs
        self.labelled += report.labelled
        self.agreed += report.agreed
        self.errors_primary += report.errors_primary
        self.errors_shadow += report.errors_shadow
        self.scored += report.scored
        mean = report.score_difference_mean
        if mean is not None:
            self.difference_sum += mean * report.scored

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start, "pairs": self.pairs, "labelled": self.labelled, "agreed": self.agreed,
            "errors_primary": self.errors_primary, "errors_shadow": self.errors_shadow,
            "scored": self.scored, "difference_sum": self.difference_sum,
        }


@dataclass(slots=True)
class ShadowPairs:
    """Everything one shadow paired over a range: the merged report, the model versions
    on each side (requests per model reference), and per-minute counts, oldest first."""

    shadow: str
    report: PairedReport = field(default_factory=PairedReport)
    models: dict[str, dict[str, int]] = field(default_factory=lambda: {"primary": {}, "shadow": {}})
    minutes: list[MinutePairs] = field(default_factory=list)


def write_buckets(database: Database, buckets: Mapping[BucketKey, Bucket], replica: str, now: float | None = None) -> None:
    """Insert each bucket as this replica's row, or merge it into the row it wrote before;
    one transaction. Call it off the event loop (it serialises sketches and does I/O)."""
    if not buckets:
        return
    rows = [(key, bucket.report.pairs, bucket.models, bucket.report.to_state()) for key, bucket in buckets.items()]
    stamp = time.time() if now is None else now
    database.transact(lambda conn: _upsert(conn, rows, replica, stamp))


def read_pairs(
    database: Database,
    deployment: str,
    *,
    since: datetime | float,
    until: datetime | float | None = None,
    shadow: str | None = None,
) -> dict[str, ShadowPairs]:
    """Each shadow's pairs (or only ``shadow``'s) whose minute starts in ``[since, until)``
    (``until``: now), merged across replicas and minutes, by shadow name. Times are aware
    datetimes or seconds since the epoch. More than :data:`MAX_ROWS_READ` rows in the range
    is a :class:`ConfigError` (narrow the range)."""
    lo, hi = epoch_span(since, until)
    first, end = -(-lo // 60) * 60, -(-hi // 60) * 60
    table = t.shadow_pairs
    where = [table.c.deployment == deployment, table.c.bucket_start >= first, table.c.bucket_start < end]
    if shadow is not None:
        where.append(table.c.shadow == shadow)
    with database.read() as conn:
        count = int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())
        if count > MAX_ROWS_READ:
            raise ConfigError(
                f"{count} shadow pair rows in this range (at most {MAX_ROWS_READ} are merged at once); narrow the range"
            )
        found = conn.execute(
            select(table.c.shadow, table.c.bucket_start, table.c.models, table.c.report)
            .where(*where)
            .order_by(table.c.shadow, table.c.bucket_start, table.c.replica)
        ).all()
    out: dict[str, ShadowPairs] = {}
    for row in found:
        pairs = out.get(row.shadow)
        if pairs is None:
            pairs = out[row.shadow] = ShadowPairs(row.shadow)
        report = PairedReport.from_dict(row.report)
        start = int(row.bucket_start)
        if not pairs.minutes or pairs.minutes[-1].start != start:
            pairs.minutes.append(MinutePairs(start))
        pairs.minutes[-1].add(report)
        pairs.report.merge(report)
        merge_models(pairs.models, row.models or {})
    return out


def replica_name() -> str:
    """A writer's name for its rows: host, process and a random suffix (a restarted process
    writes rows of its own; readers merge them all). The same recipe as live profiles'."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


# --- internals ---------------------------------------------------------------------------

_Row = tuple[BucketKey, int, dict[str, dict[str, int]], dict[str, Any]]


def _upsert(conn: Connection, rows: list[_Row], replica: str, now: float) -> None:
    """Only this replica writes rows under its name, so reading then writing is safe
    without a row lock; the stored report is read fresh, so a retried transaction (SQLite
    busy) repeats exactly."""
    table = t.shadow_pairs
    for (deployment, shadow, start), n, models, report in rows:
        where = (
            table.c.deployment == deployment,
            table.c.shadow == shadow,
            table.c.bucket_start == start,
            table.c.replica == replica,
        )
        stored = conn.execute(select(table.c.pairs, table.c.models, table.c.report).where(*where)).first()
        if stored is None:
            conn.execute(table.insert().values(
                deployment=deployment, shadow=shadow, bucket_start=start, replica=replica,
                pairs=n, models=models, report=report, updated_at=now,
            ))
            continue
        merged = PairedReport.from_dict(stored.report).merge(PairedReport.from_dict(report))
        counts = {side: dict(c) for side, c in (stored.models or {}).items()}
        merge_models(counts, models)
        conn.execute(
            table.update().where(*where).values(
                pairs=int(stored.pairs) + n, models=counts, report=merged.to_state(), updated_at=now
            )
        )

