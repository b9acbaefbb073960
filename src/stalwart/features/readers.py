"""Reading sources: everything at once for training sets, a few entities for a request.

A :class:`SourceReader` turns a declared source into :class:`SourceRows` for the engine.
``read_all`` serves the offline path; ``fetch`` serves the online path with one round
trip per source: for a SQL table that is a single statement returning the rows inside
the widest window plus, per entity, the last row before it (the only rows any feature can
use), so the engine sees the same rows on both paths.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
from sqlalchemy import (
    Column as SqlColumn,
)
from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    Table,
    bindparam,
    func,
    literal_column,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from stalwart._optional import require
from stalwart.durations import NS
from stalwart.errors import ConfigError, FeatureError
from stalwart.features.engine import SourceRows
from stalwart.features.timecodec import to_ns
from stalwart.project import CallableSource, FileSource, Source, SqlSource
from stalwart.resilience.timeout import call_with_timeout
from stalwart.storage import Database

if TYPE_CHECKING:
    from stalwart.resilience.guard import Guard

__all__ = [
    "CallableReader",
    "DatasetFile",
    "Fetched",
    "FileReader",
    "GuardedReader",
    "SourceReader",
    "SqlReader",
    "dataset_files",
    "frame_column",
    "make_reader",
    "read_dataset",
    "rows_from_records",
]

EntityKey = tuple[Any, ...]
_BOUND_MARGIN_NS = NS  # one second: far above the rounding of any stored timestamp


class SourceReader(Protocol):
    """Rows of one source, for the engine."""

    def read_all(self, columns: Sequence[str]) -> SourceRows:
        """Every row (offline): keys, times, order and the named value columns."""
        ...

    async def fetch(
        self,
        keys: Sequence[EntityKey],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        *,
        older: bool = True,
        newer: bool = False,
    ) -> SourceRows:
        """The rows any feature of these entities can use as of ``as_of_ns`` (online):
        those in ``(as_of - lookback, as_of]`` and, when ``older``, each entity's last row
        before that (for ``Latest`` values older than the lookback, and to tell a known
        entity from an unknown one). When ``newer``, also each entity's first row after
        ``as_of``, if any: the cache needs it to know when a value stops holding. Rows a
        little past ``as_of`` may come back too; the engine ignores them except for that."""
        ...


def rows_from_records(records: Sequence[Sequence[Any]], n_keys: int, columns: Sequence[str]) -> SourceRows:
    """SourceRows from tuples laid out as ``(*keys, ts, order, *columns)``.

    The one conversion both paths use for SQL results, so a value reads the same
    whether it came from a full scan or a point query.
    """
    if not records:
        return SourceRows(
            keys=[np.empty(0, dtype=np.int64) for _ in range(n_keys)],
            ts=np.empty(0, dtype=np.int64),
            order=np.empty(0, dtype=np.int64),
            columns={c: np.empty(0, dtype=np.float64) for c in columns},
        )
    transposed: list[tuple[Any, ...]] = list(zip(*records, strict=True))
    keys = [_typed(transposed[i]) for i in range(n_keys)]
    ts = to_ns(np.asarray(transposed[n_keys], dtype=object) if _has_datetimes(transposed[n_keys]) else np.asarray(transposed[n_keys]))
    order = np.asarray(transposed[n_keys + 1], dtype=np.int64)
    values = {name: _typed(transposed[n_keys + 2 + i]) for i, name in enumerate(columns)}
    return SourceRows(keys=keys, ts=ts, order=order, columns=values)


def _has_datetimes(values: Sequence[Any]) -> bool:
    return bool(values) and isinstance(values[0], dt.datetime | str)


def _typed(values: Sequence[Any]) -> np.ndarray[Any, Any]:
    """A column as the tightest numpy type: integers, floats (None -> NaN), else objects."""
    if all(isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.bool_)
    if all(type(v) is int for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(v is None or (isinstance(v, int | float | Decimal) and not isinstance(v, bool)) for v in values):
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class SqlReader:
    """A table in SQLite or PostgreSQL."""

    def __init__(self, source: SqlSource, db: Database) -> None:
        self.source = source
        self.db = db
        try:
            self.table = Table(source.table, MetaData(), autoload_with=db.engine)
        except NoSuchTableError:
            raise ConfigError(
                f"source '{source.name}': table '{source.table}' does not exist in {db.describe()}"
            ) from None
        keys = source.entity.keys
        missing = [c for c in (*keys, source.timestamp) if c not in self.table.c]
        if missing:
            raise ConfigError(f"source '{source.name}': table '{source.table}' has no column {', '.join(missing)}")
        self._ts_kind = _timestamp_kind(self.table.c[source.timestamp], source)
        self._order = _order_column(self.table, source, db.dialect)
        self._key_cols = [self.table.c[k] for k in keys]

    def value_columns(self) -> list[str]:
        skip = {*self.source.entity.keys, self.source.timestamp}
        return [c.name for c in self.table.c if c.name not in skip]

    def read_all(self, columns: Sequence[str]) -> SourceRows:
        with self.db.read() as conn:
            records = conn.execute(self.scan(columns)).all()
        return rows_from_records(records, len(self._key_cols), columns)

    def scan(self, columns: Sequence[str]) -> Any:
        """The statement reading every row as ``(*keys, time, order, *columns)``, in source
        order: what :meth:`read_all` runs, and what the offline engines stream."""
        return select(*self._key_cols, self.table.c[self.source.timestamp], self._order, *self._values(columns)).order_by(self._order)

    async def fetch(
        self,
        keys: Sequence[EntityKey],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        *,
        older: bool = True,
        newer: bool = False,
    ) -> SourceRows:
        return await asyncio.to_thread(self.fetch_sync, keys, as_of_ns, lookback_ns, columns, older, newer)

    def fetch_sync(
        self,
        keys: Sequence[EntityKey],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        older: bool = True,
        newer: bool = False,
    ) -> SourceRows:
        statement = self.statement(columns, older=older, newer=newer)
        # The database compares in its own type (float seconds, microsecond datetimes),
        # which can put a row stamped exactly at a bound on the wrong side of it. Fetch a
        # little wider and let the engine apply the exact bounds in nanoseconds, as the
        # offline path does.
        params = {
            "keys": [k[0] for k in keys] if len(self._key_cols) == 1 else [tuple(k) for k in keys],
            "as_of": self._bind_time(as_of_ns + _BOUND_MARGIN_NS),
            "start": self._bind_time(as_of_ns - lookback_ns - _BOUND_MARGIN_NS),
        }
        try:
            with self.db.autocommit() as conn:
                records = conn.execute(statement, params).all()
        except SQLAlchemyError as exc:
            raise FeatureError(f"source '{self.source.name}': query failed: {exc}") from exc
        return rows_from_records(records, len(self._key_cols), columns)

    def statement(self, columns: Sequence[str], *, older: bool = True, newer: bool = False) -> Any:
        """The single statement behind :meth:`fetch` (also what the benchmark times bare).

        Part one: rows in ``(start, as_of]``. Part two (``older``): for each entity, its
        last row at or before ``start`` (by time, then order), for ``Latest`` features and
        to tell a known entity from an unknown one. Part three (``newer``): each entity's
        first row after ``as_of``, which says when a cached value stops holding. The parts
        are disjoint, so no row counts twice.
        """
        cache = self.__dict__.setdefault("_statements", {})
        key = (tuple(columns), older, newer)
        if key in cache:
            return cache[key]
        t = self.table
        ts = t.c[self.source.timestamp]
        entity = self._key_cols[0] if len(self._key_cols) == 1 else tuple_(*self._key_cols)
        in_keys = entity.in_(bindparam("keys", expanding=True))
        selected = [*self._key_cols, ts, self._order.label("stalwart_order"), *self._values(columns)]
        parts = [select(*selected).where(in_keys, ts > bindparam("start"), ts <= bindparam("as_of"))]
        if older:
            parts.append(self._first(selected, columns, [in_keys, ts <= bindparam("start")], [ts.desc(), self._order.desc()], "older"))
        if newer:
            parts.append(self._first(selected, columns, [in_keys, ts > bindparam("as_of")], [ts.asc(), self._order.asc()], "newer"))
        statement = parts[0] if len(parts) == 1 else union_all(*parts)
        cache[key] = statement
        return statement

    def _first(self, selected: list[Any], columns: Sequence[str], where: list[Any], order: list[Any], name: str) -> Any:
        """Each entity's first row by ``order`` among those matching ``where``."""
        ts = self.table.c[self.source.timestamp]
        ranked = (
            select(*selected, func.row_number().over(partition_by=self._key_cols, order_by=order).label("stalwart_rank"))
            .where(*where)
            .subquery(name)
        )
        return select(
            *[ranked.c[c.name] for c in [*self._key_cols, ts]], ranked.c.stalwart_order, *[ranked.c[c] for c in columns]
        ).where(ranked.c.stalwart_rank == 1)

    def write(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows as they are, in one transaction; returns how many. Checking rows
        and invalidating cached features is :func:`stalwart.features.writes.write_rows`'s job."""
        if not rows:
            return 0
        with self.db.write() as conn:
            conn.execute(self.table.insert(), [dict(r) for r in rows])
        return len(rows)

    def _values(self, columns: Sequence[str]) -> list[Any]:
        missing = [c for c in columns if c not in self.table.c]
        if missing:
            raise ConfigError(f"source '{self.source.name}': table '{self.source.table}' has no column {', '.join(missing)}")
        return [self.table.c[c] for c in columns]

    @property
    def column_names(self) -> list[str]:
        """Every column of the table."""
        return [c.name for c in self.table.c]

    def stored_time(self, value: Any) -> Any:
        """A timestamp (datetime, ISO 8601 string or epoch seconds) as the table's
        timestamp column stores it. Raises ConfigError when it is none of those."""
        one = np.empty(1, dtype=object)
        one[0] = value
        ns = int(to_ns(one)[0])
        if self._ts_kind == "epoch" and isinstance(self.table.c[self.source.timestamp].type, Integer):
            return ns // NS
        return self._bind_time(ns)

    def _bind_time(self, ns: int) -> Any:
        if self._ts_kind == "epoch":
            return ns / NS
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
        # A column without a time zone holds UTC wall-clock times (how we read it back).
        return moment if self._ts_kind == "datetime_tz" else moment.replace(tzinfo=None)


def _timestamp_kind(col: SqlColumn[Any], source: SqlSource) -> str:
    if isinstance(col.type, DateTime):
        return "datetime_tz" if col.type.timezone else "datetime"
    if isinstance(col.type, Integer | Float | Numeric):
        return "epoch"
    raise ConfigError(
        f"source '{source.name}': timestamp column '{col.name}' is {col.type}; store times as "
        f"TIMESTAMP/DATETIME or as epoch seconds (a number)"
    )


def _order_column(table: Table, source: SqlSource, dialect: str) -> Any:
    if source.order_by is not None:
        if source.order_by not in table.c:
            raise ConfigError(f"source '{source.name}': order_by column '{source.order_by}' is not in the table")
        return table.c[source.order_by]
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and isinstance(pk[0].type, Integer):
        return pk[0]
    if dialect == "sqlite":
        return literal_column("rowid")
    raise ConfigError(
        f"source '{source.name}': table '{source.table}' has no integer primary key to order "
        f"rows that share a timestamp; name one with order_by="
    )


class FileReader:
    """A Parquet or CSV file, loaded once and indexed by entity for online lookups."""

    def __init__(self, source: FileSource, root: Path | None = None) -> None:
        self.source = source
        path = Path(source.path)
        self.path = path if path.is_absolute() or root is None else root / path
        self._rows: SourceRows | None = None
        self._index: dict[EntityKey, np.ndarray[Any, Any]] | None = None

    def _frame(self) -> Any:
        pd = require("pandas", extra="features", purpose="file sources")
        if not self.path.exists():
            raise ConfigError(f"source '{self.source.name}': {self.path} does not exist")
        if self.source.is_dataset:
            return read_dataset(self.path, self.source.name).to_pandas()
        if self.path.suffix == ".csv":
            return pd.read_csv(self.path)
        return pd.read_parquet(self.path)

    def _load(self) -> SourceRows:
        if self._rows is None:
            frame = self._frame()
            keys = list(self.source.entity.keys)
            needed = [*keys, self.source.timestamp]
            missing = [c for c in needed if c not in frame.columns]
            if missing:
                raise ConfigError(f"source '{self.source.name}': {self.path} has no column {', '.join(missing)}")
            columns = [c for c in frame.columns if c not in needed]
            self._rows = SourceRows(
                keys=[frame_column(frame[k]) for k in keys],
                ts=to_ns(frame[self.source.timestamp]),
                order=np.arange(len(frame), dtype=np.int64),
                columns={c: frame_column(frame[c]) for c in columns},
            )
        return self._rows

    def read_all(self, columns: Sequence[str]) -> SourceRows:
        rows = self._load()
        return SourceRows(rows.keys, rows.ts, rows.order, {c: rows.columns[c] for c in columns if c in rows.columns})

    async def fetch(
        self,
        keys: Sequence[EntityKey],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        *,
        older: bool = True,
        newer: bool = False,
    ) -> SourceRows:
        # Every row of the entities, later ones included: the file is in memory already.
        rows = self._load()
        if self._index is None:
            index: dict[EntityKey, list[int]] = {}
            for i, key in enumerate(zip(*(k.tolist() for k in rows.keys), strict=True)):
                index.setdefault(key, []).append(i)
            self._index = {k: np.asarray(v, dtype=np.int64) for k, v in index.items()}
        picks = [self._index[k] for k in map(tuple, keys) if k in self._index]
        take = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)
        return SourceRows(
            keys=[k[take] for k in rows.keys],
            ts=rows.ts[take],
            order=rows.order[take],
            columns={c: rows.columns[c][take] for c in columns if c in rows.columns},
        )


class DatasetFile(NamedTuple):
    """One Parquet file of a dataset directory and its hive partition values."""

    path: Path
    partitions: dict[str, str]


def dataset_files(directory: Path, source: str) -> list[DatasetFile]:
    """The Parquet files under ``directory``, sorted by path (the order that breaks ties
    between rows sharing a timestamp), with the ``key=value`` directories above each.
    Hidden files and directories (``.x``, ``_x``: writers' temporary files, metadata) are
    left out, as every Parquet reader does."""
    if not directory.is_dir():
        raise ConfigError(f"source '{source}': {directory} is not a directory of Parquet files")
    found: list[DatasetFile] = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).parts
        if not path.is_file() or path.suffix not in (".parquet", ".pq"):
            continue
        if any(part.startswith((".", "_")) for part in relative):
            continue
        partitions = dict(part.split("=", 1) for part in relative[:-1] if "=" in part)
        found.append(DatasetFile(path, partitions))
    if not found:
        raise ConfigError(f"source '{source}': {directory} holds no .parquet files")
    return found


def read_dataset(directory: Path, source: str) -> Any:
    """A directory of Parquet files as one Arrow table, files in path order, partition
    values as string columns (what the DuckDB and Spark engines read too)."""
    pa = require("pyarrow", extra="features", purpose="Parquet datasets")
    pq = require("pyarrow.parquet", extra="features", purpose="Parquet datasets")
    tables = []
    for file in dataset_files(directory, source):
        table = pq.read_table(file.path, partitioning=None)
        for key, value in file.partitions.items():
            if key not in table.column_names:
                table = table.append_column(key, pa.array([value] * table.num_rows, type=pa.string()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def frame_column(series: Any) -> np.ndarray[Any, Any]:
    """A pandas column as numpy: numbers as they are, anything else as objects with None
    for missing values (never pandas' NA), as the SQL path gives them."""
    if series.dtype.kind in "iufb":
        return np.asarray(series.to_numpy())
    out: np.ndarray[Any, Any] = series.astype(object).where(series.notna(), None).to_numpy(dtype=object)
    return out


class CallableReader:
    """An external lookup online; its offline counterpart's reader for training sets."""

    def __init__(self, source: CallableSource, offline: SourceReader) -> None:
        self.source = source
        self.offline = offline

    def read_all(self, columns: Sequence[str]) -> SourceRows:
        return self.offline.read_all(columns)

    async def fetch(
        self,
        keys: Sequence[EntityKey],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        *,
        older: bool = True,
        newer: bool = False,
    ) -> SourceRows:
        # Current values only: nothing is known about later ones (the cache's TTL bounds them).
        wanted = [tuple(k) for k in keys]
        fn = self.source.fn
        try:
            # A plain function may block (an HTTP client, a driver): it runs on a worker
            # thread, so a guard's time limit can give up on it and the event loop serves
            # other requests meanwhile. A coroutine function runs on the loop.
            result = fn(wanted) if inspect.iscoroutinefunction(fn) else await asyncio.to_thread(fn, wanted)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # the user's lookup can raise anything: a source failure to guard
            raise FeatureError(f"source '{self.source.name}': lookup raised {type(exc).__name__}: {exc}") from exc
        records = [(*key, 0, i, *(result[key].get(c) for c in columns)) for i, key in enumerate(wanted) if key in result]
        rows = rows_from_records(records, len(self.source.entity.keys), columns)
        # Stamped at exactly as_of, in int ns: float seconds would round half of them to an
        # instant after as_of, where a Latest feature cannot see them.
        rows.ts = np.full(len(records), as_of_ns, dtype=np.int64)
        return rows


class Fetched(NamedTuple):
    """One timed step of resolving a request's features: a source's round trip, or (with
    ``feature_set``) a cached set's lookup, which includes the round trip for its misses.
    For traces; recording one costs two clock reads, next to a round trip."""

    source: str
    feature_set: str | None  # the cached set looked up; None for a round trip to the source
    start: float  # time.perf_counter()
    seconds: float
    error: str | None = None  # the failure's class name


class GuardedReader:
    """A source's reader behind its guard (breaker, bulkhead, time limit), or, without
    one, behind the request's deadline alone. Online resolution reads only through it.

    A SQL fetch runs on a worker thread, which a timeout cannot stop: it finishes in the
    background, and the guard's bulkhead keeps counting it until it does.
    """

    __slots__ = ("guard", "name", "reader")

    def __init__(self, name: str, reader: SourceReader, guard: Guard | None = None) -> None:
        self.name = name
        self.reader = reader
        self.guard = guard

    async def fetch(
        self,
        keys: Sequence[EntityKey],
        as_of_ns: int,
        lookback_ns: int,
        columns: Sequence[str],
        *,
        older: bool,
        newer: bool,
        deadline: float | None,
        record: list[Fetched] | None = None,
    ) -> SourceRows:
        """:meth:`SourceReader.fetch` under the guard; ``deadline`` is a
        ``time.monotonic()`` instant. Raises what the guard raises when it refuses or gives
        up (``CallNotPermitted``, ``BulkheadFull``, ``CallTimeout``), else what the reader
        raises. ``record``, when given, gets the fetch's timing (the guard's wait included:
        it is the source's time as the request sees it), whether it succeeded or not."""
        reader = self.reader

        async def run() -> SourceRows:
            return await reader.fetch(keys, as_of_ns, lookback_ns, columns, older=older, newer=newer)

        if record is None:
            return await self._call(run, deadline)
        start = time.perf_counter()
        try:
            rows = await self._call(run, deadline)
        except BaseException as exc:
            record.append(Fetched(self.name, None, start, time.perf_counter() - start, type(exc).__name__))
            raise
        record.append(Fetched(self.name, None, start, time.perf_counter() - start))
        return rows

    async def _call(self, run: Callable[[], Awaitable[SourceRows]], deadline: float | None) -> SourceRows:
        if self.guard is not None:
            return await self.guard.call(run, deadline=deadline)
        if deadline is not None:
            return await call_with_timeout(run, deadline=deadline, name=f"source '{self.name}'")
        return await run()


def make_reader(source: Source, db_for: Any, root: Path | None = None) -> SourceReader:
    """The reader for a declared source; ``db_for(url)`` gives the Database for a SQL URL."""
    if isinstance(source, SqlSource):
        return SqlReader(source, db_for(source.url))
    if isinstance(source, FileSource):
        return FileReader(source, root)
    if isinstance(source, CallableSource):
        return CallableReader(source, make_reader(source.offline, db_for, root))
    raise ConfigError(f"source '{source.name}' ({type(source).__name__}) has no rows to read")

