"""The SQL prediction sink: the registry's database (SQLite or PostgreSQL), read back too.

Records go to the ``predictions`` table (``stalwart.storage.tables``, created by migration
3): the record's JSON exactly as the writer encoded it (the hash chain is over those
bytes), plus copies of the fields the queries filter on. Writes are idempotent by request
id, because the prediction log replays its spool after a crash or an outage:

- SQLite: one ``INSERT ... ON CONFLICT (request_id) DO NOTHING`` executed per batch, in a
  write transaction retried while another process holds the lock (``Database.transact``);
- PostgreSQL: the batch is ``COPY``-ed into a temporary table, then moved with
  ``INSERT ... SELECT ... ON CONFLICT (request_id) DO NOTHING``, in one transaction: COPY
  is several times faster than any INSERT, and a duplicate never aborts the batch.

Whatever the database refuses (it is down, unreachable, full, or a record clashes with a
stored one) is :class:`~stalwart.errors.SinkUnavailable`: the log keeps the batch in its
spool and tries again, so nothing is lost. Messages never name the database's URL; the
server log has it, password hidden.

>>> sink = SqlSink(Database("sqlite:///:memory:"))
>>> sink.write([PredictionRecord(request_id="r1", time_ns=1, entrypoint="/v2", status=200, latency_ms=2.5)], None)
>>> sink.get("r1").latency_ms
2.5
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from stalwart.config import Settings
from stalwart.errors import SchemaVersionError, SinkUnavailable, StorageError
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.records import PredictionRecord, decode_record, encode_record
from stalwart.monitoring.sinks.base import Query
from stalwart.storage import Database
from stalwart.storage.tables import predictions

__all__ = ["SqlSink"]

T = TypeVar("T")

_log = get_logger("stalwart.prediction_log")

# The table's columns in the order of the rows _row builds (COPY and INSERT name them).
COLUMNS = (
    "request_id", "time_ns", "entrypoint", "deployment", "variant", "model", "version", "status",
    "error", "degraded", "latency_ms", "trace_id", "chain", "seq", "hash", "record",
)
_NAMES = ", ".join(COLUMNS)
_INCOMING = "stalwart_predictions_incoming"
# A session's own table, emptied at every commit: created once per connection, it costs no
# catalog write per batch (ON COMMIT DROP would create and drop it every time).
_CREATE_INCOMING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} "
    f"(LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY {_INCOMING} ({_NAMES}) FROM STDIN"
# Built from the constant column names above, never from input.
_MOVE = (
    f"INSERT INTO predictions ({_NAMES}) SELECT {_NAMES} FROM {_INCOMING} "  # noqa: S608 - constant names
    f"ON CONFLICT (request_id) DO NOTHING"
)
_INSERT_SQLITE = (
    f"INSERT INTO predictions ({_NAMES}) VALUES ({', '.join('?' * len(COLUMNS))}) "  # noqa: S608 - constant names
    f"ON CONFLICT (request_id) DO NOTHING"
)
_PAGE = 1_000  # records per read when streaming a chain
_DELETE_BATCH = 10_000  # rows per retention transaction: SQLite's write lock is never held long


class SqlSink:
    """Prediction records in a SQL database: a :class:`~stalwart.monitoring.sinks.PredictionSink`
    and a :class:`~stalwart.monitoring.sinks.PredictionStore`.

    ``db`` is the database to use; the sink disposes of its connections on :meth:`close`
    only when ``owns_db`` (as :meth:`from_settings` makes it). The schema is brought up to
    date on first use, not here, so a sink can be made while its database is down.
    """

    name = "sql"

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self._db = db
        self._owns_db = owns_db
        self._migrated = False
        self._errors: tuple[type[BaseException], ...] = (StorageError, SQLAlchemyError)
        if db.dialect == "postgresql":
            import psycopg  # the COPY path speaks to the driver directly

            self._errors = (*self._errors, psycopg.Error)

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlSink:
        """The sink on the registry's database: ``STALWART_DB_URL``, else SQLite under
        ``STALWART_HOME``."""
        return cls(Database(settings.resolved_db_url(), auto_migrate=False), owns_db=True)

    def describe(self) -> str:
        """The database, its password hidden: for logs and messages."""
        return self._db.describe()

    # -- writing ----------------------------------------------------------------------

    def write(self, records: Sequence[PredictionRecord], encoded: Sequence[bytes] | None) -> None:
        """Store ``records`` (``encoded``: each one's JSON; encoded here when None), each
        once however often its request id arrives. Raises SinkUnavailable when it cannot."""
        if not records:
            return
        if encoded is None:
            encoded = [encode_record(record) for record in records]
        if len(encoded) != len(records):
            raise ValueError(f"{len(records)} records but {len(encoded)} encodings")
        rows = [_row(record, data) for record, data in zip(records, encoded, strict=True)]
        work = self._copy_rows if self._db.dialect == "postgresql" else self._insert_rows
        self._run("store records in", lambda: self._db.transact(lambda conn: work(conn, rows)))

    @staticmethod
    def _insert_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        conn.exec_driver_sql(_INSERT_SQLITE, rows)

    @staticmethod
    def _copy_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        raw: Any = conn.connection.driver_connection  # psycopg's own connection: COPY
        with raw.cursor() as cursor:
            cursor.execute(_CREATE_INCOMING)
            with cursor.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(_MOVE)

    # -- reading ----------------------------------------------------------------------

    def get(self, request_id: str) -> PredictionRecord | None:
        """The record of ``request_id``, or None when none is stored."""
        statement = select(predictions.c.record).where(predictions.c.request_id == request_id)
        text = self._read("read a record from", lambda conn: conn.execute(statement).scalar_one_or_none())
        return None if text is None else decode_record(text)

    def query(self, query: Query) -> list[PredictionRecord]:
        """Records matching every filter of ``query``, newest first, at most ``query.limit``.
        ``since_ns`` is inclusive, ``until_ns`` exclusive."""
        statement = (
            select(predictions.c.record)
            .where(*_filters(query))
            .order_by(predictions.c.time_ns.desc(), predictions.c.request_id.desc())
            .limit(max(query.limit, 0))
        )
        texts = self._read("query", lambda conn: list(conn.execute(statement).scalars()))
        return [decode_record(text) for text in texts]

    def chains(self) -> list[str]:
        """The names of the hash chains stored, sorted."""
        statement = select(predictions.c.chain).where(predictions.c.chain.is_not(None)).distinct().order_by(predictions.c.chain)
        return self._read("list the chains in", lambda conn: [str(name) for name in conn.execute(statement).scalars()])

    def chain(self, name: str) -> Iterator[PredictionRecord]:
        """One chain's records by position, read a page at a time (a chain may hold
        millions): each page is one short read that resumes after the last position seen."""
        after: int | None = None
        while True:
            statement = select(predictions.c.seq, predictions.c.record).where(predictions.c.chain == name)
            if after is not None:
                statement = statement.where(predictions.c.seq > after)
            page = self._read("read a chain from", _fetch(statement.order_by(predictions.c.seq).limit(_PAGE)))
            for _seq, text in page:
                yield decode_record(text)
            if len(page) < _PAGE:
                return
            after = int(page[-1][0])

    # -- retention --------------------------------------------------------------------

    def delete_older(self, cutoff_ns: int) -> int:
        """Remove records older than ``cutoff_ns``; returns how many.

        A chain loses a prefix only, never a record from its middle: a slow request
        arrives before a fast one yet is linked after it, so deleting purely by time could
        leave a gap that verification would report as a removed record. In each chain,
        records older than the cutoff stay while a newer one precedes them (they go on the
        next pass once it is old too). Records without a chain go by time alone. Rows are
        deleted in batches, each its own short transaction.
        """
        deleted = self._delete_batches(predictions.c.chain.is_(None) & (predictions.c.time_ns < cutoff_ns))
        for name in self.chains():
            first_kept = select(func.min(predictions.c.seq)).where(predictions.c.chain == name, predictions.c.time_ns >= cutoff_ns)
            rows = self._read("read a chain from", _fetch(first_kept))
            boundary = rows[0][0] if rows else None
            older = (predictions.c.chain == name) & (predictions.c.time_ns < cutoff_ns)
            if boundary is not None:
                older = older & (predictions.c.seq < boundary)
            deleted += self._delete_batches(older)
        return deleted

    def _delete_batches(self, where: ColumnElement[bool]) -> int:
        batch = select(predictions.c.request_id).where(where).limit(_DELETE_BATCH).scalar_subquery()
        deleter = _deleter(delete(predictions).where(predictions.c.request_id.in_(batch)))
        total = 0
        while True:
            count = self._run("delete records from", lambda: self._db.transact(deleter))
            total += count
            if count < _DELETE_BATCH:
                return total

    def close(self) -> None:
        """Close the sink's connections (when it opened its database itself)."""
        if self._owns_db:
            self._db.dispose()

    # -- errors -----------------------------------------------------------------------

    def _read(self, what: str, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self._db.read() as conn:
                return work(conn)

        return self._run(what, run)

    def _run(self, what: str, work: Callable[[], T]) -> T:
        """``work()`` on a migrated database; what the database refuses becomes SinkUnavailable."""
        try:
            if not self._migrated:
                self._db.migrate()
                self._migrated = True
            return work()
        except SchemaVersionError as exc:
            raise SinkUnavailable(exc.message) from exc  # it says what to do, and names no URL
        except self._errors as exc:
            # The server log gets the database (password hidden) and the driver's message;
            # the exception, which reaches CLI users and HTTP clients, names neither.
            cause = _driver_error(exc)
            _log.warning(
                "prediction log database failed", action=what, database=self._db.describe(),
                error_type=type(cause).__name__, error=str(cause),
            )
            raise SinkUnavailable(
                f"cannot {what} the prediction log's database ({type(cause).__name__}); check that "
                f"it is running and reachable (STALWART_DB_URL); the detail is logged"
            ) from exc


def _fetch(statement: Any) -> Callable[[Connection], list[tuple[Any, ...]]]:
    """A reader of ``statement``'s rows, as tuples."""

    def fetch(conn: Connection) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(statement)]

    return fetch


def _deleter(statement: Any) -> Callable[[Connection], int]:
    def run(conn: Connection) -> int:
        return int(conn.execute(statement).rowcount)

    return run


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's and Stalwart's wrappers (what to log)."""
    seen = 0
    while seen < 5:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            return exc
        exc, seen = inner, seen + 1
    return exc


def _row(record: PredictionRecord, encoded: bytes) -> tuple[Any, ...]:
    return (
        record.request_id, record.time_ns, record.entrypoint, record.deployment, record.variant,
        record.model, record.version, record.status, record.error, record.degraded,
        record.latency_ms, record.trace_id, record.chain, record.seq, record.hash,
        encoded.decode(),
    )


def _filters(query: Query) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``query``: one per filter given."""
    c = predictions.c
    where: list[ColumnElement[bool]] = []
    filters = (
        (c.deployment, query.deployment), (c.model, query.model), (c.version, query.version),
        (c.variant, query.variant), (c.status, query.status),
    )
    for column, value in filters:
        if value is not None:
            where.append(column == value)
    if query.errors_only:
        where.append(c.status >= 400)
    if query.degraded is not None:
        where.append(c.degraded.is_not(None) if query.degraded else c.degraded.is_(None))
    if query.since_ns is not None:
        where.append(c.time_ns >= query.since_ns)
    if query.until_ns is not None:
        where.append(c.time_ns < query.until_ns)
    return where
