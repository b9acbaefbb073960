"""One database handle for SQLite and PostgreSQL: engine, transactions, migrations.

SQLite is the embedded default; PostgreSQL is what N replicas share. The code above this
module is the same for both: the few places where the dialects differ (taking the write
lock, insert-or-ignore) are decided here.
"""

from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Insert, RootTransaction, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from stalwart.config import private_dir
from stalwart.errors import ConfigError, MissingExtraError, StorageError
from stalwart.storage.migrations import migrate

__all__ = ["Database"]

T = TypeVar("T")

_SQLITE_BUSY = 5


class Database:
    """A migrated database, ready for the registry and the other stores.

    >>> db = Database("sqlite:///:memory:")
    >>> with db.read() as conn:
    ...     conn.exec_driver_sql("select 1").scalar()
    1
    """

    def __init__(
        self,
        url: str,
        *,
        auto_migrate: bool = True,
        busy_timeout: float = 30.0,
        busy_retry_seconds: float = 10.0,
    ) -> None:
        """``busy_timeout``: how long SQLite waits for another writer's lock;
        ``busy_retry_seconds``: how long a write is then retried, with backoff, when SQLite
        still answers "database is locked" (see :meth:`transact`)."""
        self.url = _normalise_url(url)
        self.busy_timeout = busy_timeout
        self.busy_retry_seconds = busy_retry_seconds
        self.engine = _create_engine(self.url, busy_timeout)
        self.dialect = self.engine.dialect.name
        if auto_migrate:
            self.migrate()

    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        with self.write() as conn:
            return [m.version for m in migrate(conn)]

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that takes the write lock up front.

        On SQLite that is ``BEGIN IMMEDIATE``, so two processes that read-then-write (as
        version allocation does) serialise instead of failing with "database is locked".
        Taking the lock is retried with backoff while SQLite reports the database busy;
        once taken, nothing in the transaction waits for another writer.
        """
        try:
            with self._write_once() as conn:
                yield conn
        except OperationalError as exc:
            raise self._error(exc) from exc

    def transact(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in one write transaction, whose result it returns.

        When SQLite reports the database busy anywhere in the transaction (SQLite can, in
        WAL mode, without waiting out its busy timeout: a connection closing, a checkpoint),
        the whole transaction is rolled back and run again, with backoff, for up to
        ``busy_retry_seconds``. ``work`` must therefore touch nothing but ``conn``.
        """
        deadline = time.monotonic() + self.busy_retry_seconds
        delay = 0.01
        while True:
            try:
                with self._write_once() as conn:
                    return work(conn)
            except OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise self._error(exc) from exc
            time.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, 1.0)

    @contextmanager
    def _write_once(self) -> Iterator[Connection]:
        conn, txn = self._begin(write=True)
        with conn, txn:
            yield conn

    def _begin(self, *, write: bool) -> tuple[Connection, RootTransaction]:
        """A connection in a transaction (holding the write lock, or a read snapshot),
        retrying while the database is busy."""
        deadline = time.monotonic() + self.busy_retry_seconds
        delay = 0.01
        while True:
            conn: Connection | None = None
            try:
                conn = self.engine.connect()
                if write:
                    conn.execution_options(stalwart_write=True)
                txn = conn.begin()
                if not write and self.dialect == "sqlite":
                    # A deferred BEGIN takes its snapshot at the first read, which is where a
                    # WAL database being cleaned up by a closing connection answers busy;
                    # read now, while the transaction can still be started again.
                    conn.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1")
                return conn, txn
            except OperationalError as exc:
                if conn is not None:
                    conn.close()
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, 1.0)

    def _error(self, exc: OperationalError) -> StorageError:
        if _is_busy(exc):
            return StorageError(
                f"database error on {self.describe()}: {exc.orig}: another process held the "
                f"write lock for over {self.busy_timeout + self.busy_retry_seconds:g} s; retry "
                f"when it is done, or use PostgreSQL (STALWART_DB_URL) for many writers"
            )
        return StorageError(
            f"database error on {self.describe()}: {exc.orig}; check that the database "
            f"is reachable and STALWART_DB_URL is right"
        )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (starting it is retried while SQLite reports the database busy)."""
        try:
            conn, txn = self._begin(write=False)
            with conn, txn:
                yield conn
        except OperationalError as exc:
            raise self._error(exc) from exc

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction whose statements all see one committed state: what checking a
        hash chain against its head needs while others append. SQLite's read transactions
        are snapshots already; PostgreSQL's default (READ COMMITTED) takes a new snapshot per
        statement, so this one runs at REPEATABLE READ."""
        if self.dialect != "postgresql":
            with self.read() as conn:
                yield conn
            return
        try:
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise self._error(exc) from exc

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection without a transaction, for single read statements on the request
        path: no BEGIN/COMMIT, so one statement is one round trip."""
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def insert_ignoring_conflicts(self, table: Table, **values: Any) -> Insert:
        """``INSERT ... ON CONFLICT DO NOTHING`` in this database's dialect."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).values(**values).on_conflict_do_nothing()
        return sqlite.insert(table).values(**values).on_conflict_do_nothing()

    def describe(self) -> str:
        """The URL without its password, safe for logs and messages."""
        return str(self.url.render_as_string(hide_password=True))

    def dispose(self) -> None:
        self.engine.dispose()


def _normalise_url(url: str) -> Any:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"STALWART_DB_URL is not a database URL ({exc}); use sqlite:///path or "
            f"postgresql://user@host/db"
        ) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database '{parsed.get_backend_name()}'; use SQLite or PostgreSQL"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        private_dir(path.parent)
        _create_private(path)
    return parsed


def _create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only, unless it exists.

    An empty file is an empty SQLite database. SQLite gives the -wal, -shm and -journal
    files it creates later the database file's own mode, so they are private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # an existing database keeps the mode its owner gave it
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # exactly 0600, whatever the umask
    finally:
        os.close(fd)


def _is_busy(exc: OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY)."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == _SQLITE_BUSY  # extended codes keep the primary code low
    return "database is locked" in str(exc.orig)


def _create_engine(url: Any, busy_timeout: float) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout})
            _configure_sqlite(engine, busy_timeout)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except NoSuchModuleError as exc:
        raise MissingExtraError("psycopg", "postgres", "PostgreSQL storage") from exc
    except ModuleNotFoundError as exc:
        raise MissingExtraError("psycopg", "postgres", "PostgreSQL storage") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open the database: {exc}") from exc


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock early;
    # switch it off and issue BEGIN ourselves (SQLAlchemy's documented recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("stalwart_write", False) else "BEGIN")
