"""One database handle for SQLite and PostgreSQL: engine, transactions, migrations.

SQLite is the embedded default; PostgreSQL is what N replicas share. The code above this
module is the same for both: the few places where the dialects differ (taking the write
lock, insert-or-ignore) are decided here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from stalwart.errors import ConfigError, MissingExtraError, StorageError
from stalwart.storage.migrations import migrate

__all__ = ["Database"]


class Database:
    """A migrated database, ready for the registry and the other stores.

    >>> db = Database("sqlite:///:memory:")
    >>> with db.read() as conn:
    ...     conn.exec_driver_sql("select 1").scalar()
    1
    """

    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.url = _normalise_url(url)
        self.engine = _create_engine(self.url)
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
        """
        try:
            with self.engine.connect() as conn:
                conn.execution_options(stalwart_write=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StorageError(
                f"database error on {self.describe()}: {exc.orig}; check that the database "
                f"is reachable and STALWART_DB_URL is right"
            ) from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise StorageError(
                f"database error on {self.describe()}: {exc.orig}; check that the database "
                f"is reachable and STALWART_DB_URL is right"
            ) from exc

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
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return parsed


def _create_engine(url: Any) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            _configure_sqlite(engine)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except NoSuchModuleError as exc:
        raise MissingExtraError("psycopg", "postgres", "PostgreSQL storage") from exc
    except ModuleNotFoundError as exc:
        raise MissingExtraError("psycopg", "postgres", "PostgreSQL storage") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open the database: {exc}") from exc


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock early;
    # switch it off and issue BEGIN ourselves (SQLAlchemy's documented recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("stalwart_write", False) else "BEGIN")
