"""The DuckDB engine: a feature list compiled to one SQL query, run embedded.

Events and sources stay where they are (Parquet files and directories are scanned in
place, hive partitions included; SQL tables and CSV files stream in as Arrow batches,
:mod:`stalwart.offline.sources`), and DuckDB spills to disk what does not fit in memory
(``memory_limit``, ``temp_directory``). Per feature set, in one chain of CTEs:

- ``Latest``: an ``ASOF LEFT JOIN`` of the events on the source's rows (entity keys equal,
  row time at or before the event's), the rows first reduced to the last of each
  (entity, time) by source order, so ties resolve as the numpy engine resolves them;
  ``max_age`` and the default in a ``CASE``;
- ``Window``: the events and the source's rows in one ``UNION ALL``, ordered by time within
  each entity, and each aggregate a window function over ``RANGE BETWEEN w - 1 PRECEDING
  AND CURRENT ROW`` on the int64-nanosecond time: exactly ``(t - w, t]``, rows at the
  event's own time included (they are its peers); event rows are kept (``QUALIFY``).

NaN in a number column is made null first (numpy ignores NaN where SQL would count it).
The query's result streams out in Arrow batches through :class:`~stalwart.offline.batches.Finish`
(transforms, names, order): nothing is collected in the middle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError, FeatureError
from stalwart.features.readers import dataset_files
from stalwart.offline.batches import Finish
from stalwart.offline.engine import Computed, Job
from stalwart.offline.outputs import collect, write_parquet
from stalwart.offline.plan import ColumnKind, Plan, SetPlan
from stalwart.offline.sources import (
    ORDER,
    ROW,
    TS,
    csv_batches,
    events_table,
    sql_batches,
    with_event_columns,
)
from stalwart.project import CallableSource, FileSource, Source, SqlSource, Window
from stalwart.storage import DatabasePool

__all__ = ["DuckDBEngine", "quote"]

_FILE_STRIDE = 1 << 40  # source order of a dataset's rows: file index * stride + row in file
_NUMBER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "BOOLEAN")


def quote(name: str) -> str:
    """A SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return f"CAST({float(value)!r} AS DOUBLE)" if value == value else "CAST('NaN' AS DOUBLE)"
    return "'" + str(value).replace("'", "''") + "'"


def _kind(sql_type: str) -> ColumnKind | None:
    base = sql_type.upper().strip('"')
    if base in _NUMBER_TYPES or base.startswith("DECIMAL"):
        return "number"
    if base in ("VARCHAR", "NULL"):  # a column of nothing but nulls: objects in numpy
        return "string"
    return None


def ts_expression(column: str, sql_type: str) -> str:
    """SQL turning a time column into int64 ns since the epoch (UTC), as ``to_ns`` does:
    datetimes without a zone are UTC, numbers are epoch seconds (floats rounded half to
    even, like numpy), strings ISO 8601."""
    col = quote(column)
    base = sql_type.upper()
    if base.startswith("TIMESTAMP") or base == "DATE":
        return f"epoch_ns(CAST({col} AS {'TIMESTAMP' if base == 'DATE' else sql_type}))"
    if base in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"):
        return f"(CAST({col} AS BIGINT) * 1000000000)"
    if base in ("FLOAT", "DOUBLE") or base.startswith("DECIMAL"):
        return f"CAST(round_even(CAST({col} AS DOUBLE) * 1000000000.0, 0) AS BIGINT)"
    if base == "VARCHAR":
        return f"epoch_ns(CAST({col} AS TIMESTAMPTZ))"
    raise ConfigError(f"cannot read timestamps of type {sql_type} in column '{column}'; use datetimes or epoch seconds")


@dataclass
class DuckDBEngine:
    """Run plans on an embedded DuckDB (see the module docstring).

    ``memory_limit`` (``"4GB"``) and ``threads`` bound what it uses; ``temp_directory`` is
    where it spills (default: DuckDB's own, beside the database or in the working
    directory); ``batch_rows`` is the size of the result batches streamed out.
    """

    memory_limit: str | None = None
    threads: int | None = None
    temp_directory: str | None = None
    batch_rows: int = 262_144
    name: str = field(default="duckdb", init=False)

    def connect(self) -> Any:
        """A new in-memory DuckDB connection with this engine's limits, UTC as its zone."""
        duckdb = require("duckdb", extra="duckdb", purpose="the DuckDB engine")
        # Extensions beyond the bundled ones would be downloads: never at run time.
        config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        if self.memory_limit is not None:
            config["memory_limit"] = self.memory_limit
        if self.threads is not None:
            config["threads"] = self.threads
        if self.temp_directory is not None:
            config["temp_directory"] = self.temp_directory
        conn = duckdb.connect(":memory:", config=config)
        conn.execute("SET TimeZone = 'UTC'")  # times without a zone are UTC, as in numpy
        return conn

    def compute(self, job: Job) -> Computed:
        """The job's rows (see :class:`~stalwart.offline.engine.OfflineEngine`)."""
        plan = job.plan
        if isinstance(job.events, str | Path):
            columns, events, carry = plan.output_columns(), job.events, []
        else:
            # In-memory events: the query carries keys and request values; the rows come
            # back as features, and the events' own columns are taken by position.
            columns, carry = plan.features, [ROW]
            events = events_table(job.events, [c for c in plan.event_columns() if c != plan.timestamp], plan.timestamp)
        partition = job.partition if job.output is not None else None
        job.report(f"computing features on {self.name}")
        stream = self.run(plan, events, root=job.root, settings=job.settings, ordered=job.output is None, partition=partition)
        finish = Finish(plan, columns=columns, carry=[*carry, *([partition] if partition else [])])
        batches = finish.batches(stream)
        if not isinstance(job.events, str | Path) and job.output is not None:
            batches = with_event_columns(batches, job.events, plan, partition)
        on_batch = (lambda n: job.report("rows", n)) if job.progress is not None else None
        if job.output is None:
            table, profile = collect(batches, plan.features, on_batch)
            return Computed(table=table, path=None, rows=table.num_rows, profile=profile)
        rows, profile = write_parquet(batches, job.output, job.partition, plan.features, on_batch)
        return Computed(table=None, path=job.output, rows=rows, profile=profile)

    def run(
        self,
        plan: Plan,
        events: Any,
        *,
        root: Path | None,
        settings: Settings | None,
        ordered: bool,
        partition: str | None = None,
    ) -> Iterator[Any]:
        """The plan's query over ``events`` (an Arrow table with :data:`TS` and
        :data:`ROW`, or a path to Parquet events), as a stream of result batches: event
        columns, then computed ones under their internal names; in event order when
        ``ordered``; with a ``partition`` column (the event's UTC date) when named."""
        duckdb = require("duckdb", extra="duckdb", purpose="the DuckDB engine")
        conn = self.connect()
        pool = DatabasePool(settings)
        try:
            # Errors can surface while compiling (a missing column), starting the query, or
            # mid-stream (a cast): all are DuckDB's, said as one feature error.
            try:
                query = Compiler(conn, plan, root, pool).compile(events, ordered=ordered, partition=partition)
                yield from conn.sql(query).to_arrow_reader(self.batch_rows)
            except duckdb.Error as exc:
                raise FeatureError(f"the DuckDB engine failed: {exc}; check the sources' columns and types") from exc
        finally:
            pool.dispose()
            conn.close()


class Compiler:
    """One plan's sources registered on a connection, and its query."""

    def __init__(self, conn: Any, plan: Plan, root: Path | None, pool: DatabasePool) -> None:
        self.conn = conn
        self.plan = plan
        self.root = root
        self.pool = pool

    # -- relations --------------------------------------------------------------------------

    def _types(self, relation: str) -> dict[str, str]:
        return {str(row[0]): str(row[1]) for row in self.conn.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}

    def register_events(self, events: Any) -> tuple[list[str], list[str]]:
        """A view ``events`` with the event columns, :data:`TS` and the columns that order
        it; returns the event columns it carries and those order columns."""
        if isinstance(events, str | Path):
            files = _parquet_files(Path(events))
            listed = ", ".join(_literal(str(f)) for f in files)
            self.conn.execute(
                f"CREATE VIEW events_raw AS SELECT * FROM read_parquet([{listed}], filename = true, "
                f"file_row_number = true, hive_partitioning = true, hive_types_autocast = false)"
            )
            types = self._types("events_raw")
            self._check_event_columns(types)
            stamp = ts_expression(self.plan.timestamp, types[self.plan.timestamp])
            keep = ", ".join(quote(c) for c in self.plan.event_columns())
            self.conn.execute(
                f"CREATE VIEW events AS SELECT {keep}, {stamp} AS {TS}, "
                f"list_position([{listed}], filename) AS __file, file_row_number AS __file_row FROM events_raw"
            )
            return self.plan.event_columns(), ["__file", "__file_row"]
        self.conn.register("events_arrow", events)
        self.conn.execute("CREATE VIEW events AS SELECT * FROM events_arrow")
        # In-memory events keep their own time column: only the features come back.
        return [c for c in events.column_names if c not in (TS, ROW)], [ROW]

    def _check_event_columns(self, types: dict[str, str]) -> None:
        missing = [c for c in self.plan.event_columns() if c not in types]
        if missing:
            raise ConfigError(f"events have no column {', '.join(repr(m) for m in missing)}; they need {self.plan.event_columns()}")

    def register_source(self, set_plan: SetPlan) -> tuple[str, dict[str, ColumnKind]]:
        """A view ``s<i>``: entity keys, :data:`TS`, :data:`ORDER` and the value columns
        under their internal names (numbers as DOUBLE, NaN made null); and the kind of each
        value column."""
        source = _offline(set_plan.feature_set.source)
        raw = f"raw{set_plan.index}"
        if isinstance(source, SqlSource):
            self.conn.register(f"{raw}_arrow", sql_batches(source, self.pool(source.url), set_plan.columns))
            # A stream can be read once; the query reads the source twice (latest, windows).
            self.conn.execute(f"CREATE TEMP TABLE {raw} AS SELECT * FROM {raw}_arrow")
            stamp, order = TS, ORDER
        elif isinstance(source, FileSource):
            path = Path(source.path) if Path(source.path).is_absolute() or self.root is None else self.root / source.path
            if source.is_dataset or path.suffix != ".csv":
                files = [f.path for f in dataset_files(path, source.name)] if source.is_dataset else [_existing(path, source.name)]
                listed = ", ".join(_literal(str(f)) for f in files)
                self.conn.execute(
                    f"CREATE VIEW {raw} AS SELECT *, (list_position([{listed}], filename) - 1) * {_FILE_STRIDE} "
                    f"+ file_row_number AS {ORDER} FROM read_parquet([{listed}], filename = true, "
                    f"file_row_number = true, hive_partitioning = {str(source.is_dataset).lower()}, hive_types_autocast = false)"
                )
            else:
                self.conn.register(f"{raw}_arrow", csv_batches(path, source.name))
                self.conn.execute(f"CREATE TEMP TABLE {raw} AS SELECT * FROM {raw}_arrow")
            stamp, order = None, ORDER
        else:
            raise ConfigError(f"source '{source.name}' ({type(source).__name__}) has no rows to read")
        types = self._types(raw)
        keys = set_plan.keys
        kinds = set_plan.column_kinds(types, _kind, timestamp=source.timestamp if stamp is None else None)
        values = []
        for column, kind in kinds.items():
            col = quote(column)
            expr = f"CASE WHEN isnan(CAST({col} AS DOUBLE)) THEN NULL ELSE CAST({col} AS DOUBLE) END" if kind == "number" else col
            values.append(f"{expr} AS {set_plan.value_column(column)}")
        time_expr = TS if stamp is not None else ts_expression(source.timestamp, types[source.timestamp])
        select_keys = ", ".join(quote(k) for k in keys)
        self.conn.execute(
            f"CREATE VIEW s{set_plan.index} AS SELECT {select_keys}, {time_expr} AS {TS}, {order} AS {ORDER}"
            f"{''.join(', ' + v for v in values)} FROM {raw}"
        )
        return f"s{set_plan.index}", kinds

    # -- the query ----------------------------------------------------------------------------

    def compile(self, events: Any, *, ordered: bool, partition: str | None) -> str:
        event_columns, order_columns = self.register_events(events)
        event_types = self._types("events")
        ctes: list[str] = []
        current = "events"
        for set_plan in self.plan.sets:
            source, kinds = self.register_source(set_plan)
            set_plan.check_kinds(kinds, "duckdb")
            current, source = self._keyed(ctes, current, source, set_plan, event_types)
            current = self._latest(ctes, current, source, set_plan)
            current = self._windows(ctes, current, source, set_plan)
            ctes.append(f"done{set_plan.index} AS (SELECT * EXCLUDE ({', '.join(set_plan.join_keys)}) FROM {current})")
            current = f"done{set_plan.index}"
        computed = [set_plan.name(f.name) for set_plan in self.plan.sets for f in [*set_plan.latest, *(w for ws in set_plan.windows.values() for w in ws)]]
        columns = [*event_columns, *computed, *order_columns]
        select = ", ".join(quote(c) for c in dict.fromkeys(columns))
        if partition is not None:
            select += f", CAST(CAST(make_timestamp({TS} // 1000) AS DATE) AS VARCHAR) AS {quote(partition)}"
        order = f" ORDER BY {', '.join(order_columns)}" if ordered else ""
        with_clause = f"WITH {', '.join(ctes)} " if ctes else ""
        return f"{with_clause}SELECT {select} FROM {current}{order}"

    def _keyed(self, ctes: list[str], current: str, source: str, set_plan: SetPlan, event_types: dict[str, str]) -> tuple[str, str]:
        """Both sides with the set's join keys (:attr:`SetPlan.join_keys`); the source
        without its own key columns, which must not mix into the events' in the union."""
        source_types = self._types(source)
        i = set_plan.index
        exprs = []
        for key, name in zip(set_plan.keys, set_plan.join_keys, strict=True):
            text = _kind(event_types[key]) != _kind(source_types[key])
            exprs.append((f"CAST({quote(key)} AS VARCHAR)" if text else quote(key)) + f" AS {name}")
        keyed = ", ".join(exprs)
        originals = ", ".join(quote(k) for k in set_plan.keys)
        ctes.append(f"keyed{i} AS (SELECT *, {keyed} FROM {current})")
        ctes.append(f"src{i} AS (SELECT * EXCLUDE ({originals}), {keyed} FROM {source})")
        return f"keyed{i}", f"src{i}"

    def _latest(self, ctes: list[str], current: str, source: str, set_plan: SetPlan) -> str:
        if not set_plan.latest:
            return current
        i = set_plan.index
        keys = ", ".join(set_plan.join_keys)
        on = " AND ".join(f"e.{k} = s.{k}" for k in set_plan.join_keys)
        columns = list(dict.fromkeys(f.column for f in set_plan.latest))
        picked = ", ".join(f"s.{set_plan.value_column(c)} AS __l{i}_{set_plan.columns.index(c)}" for c in columns)
        # The last row of each (entity, time) by source order: a hash aggregate (arg_max of
        # the values by order), cheaper than sorting the source to number its rows.
        values = [set_plan.value_column(c) for c in columns]
        packed = ", ".join(f"{v} := {v}" for v in values)
        unpacked = ", ".join(f"__last.{v} AS {v}" for v in values)
        ctes.append(
            f"last{i} AS (SELECT {keys}, {TS}, {unpacked} FROM (SELECT {keys}, {TS}, "
            f"arg_max(struct_pack({packed}), {ORDER}) AS __last FROM {source} GROUP BY {keys}, {TS}))"
        )
        ctes.append(
            f"asof{i} AS (SELECT e.*, s.{TS} AS __lt{i}, {picked} FROM {current} e "
            f"ASOF LEFT JOIN last{i} s ON {on} AND e.{TS} >= s.{TS})"
        )
        features = []
        for feature in set_plan.latest:
            value = f"__l{i}_{set_plan.columns.index(feature.column)}"
            if feature.max_age_ns is not None:
                value = f"CASE WHEN {TS} - __lt{i} <= {feature.max_age_ns} THEN {value} END"
            features.append(f"coalesce({value}, {_literal(feature.default)}) AS {quote(set_plan.name(feature.name))}")
        helpers = ", ".join([f"__lt{i}", *(f"__l{i}_{set_plan.columns.index(c)}" for c in columns)])
        ctes.append(f"latest{i} AS (SELECT * EXCLUDE ({helpers}), {', '.join(features)} FROM asof{i})")
        return f"latest{i}"

    def _windows(self, ctes: list[str], current: str, source: str, set_plan: SetPlan) -> str:
        if not set_plan.windows:
            return current
        i = set_plan.index
        keys = ", ".join(set_plan.join_keys)
        columns = list(dict.fromkeys(w.column for ws in set_plan.windows.values() for w in ws if w.column is not None))
        values = [set_plan.value_column(c) for c in columns]
        one = f"__one{i}"
        ctes.append(
            f"union{i} AS (SELECT *, 1 AS __ev FROM {current} UNION ALL BY NAME "
            f"SELECT {keys}, {TS}{''.join(', ' + v for v in values)}, 1 AS {one}, 0 AS __ev FROM {source})"
        )
        exprs: list[str] = []
        frames: list[str] = []
        for width, features in set_plan.windows.items():
            frame = f"w{i}_{len(frames)}"
            frames.append(f"{frame} AS (PARTITION BY {keys} ORDER BY {TS} RANGE BETWEEN {width - 1} PRECEDING AND CURRENT ROW)")
            for feature in features:
                exprs.append(f"{_aggregate(feature, set_plan, one, frame)} AS {quote(set_plan.name(feature.name))}")
        helpers = ", ".join([*values, one, "__ev"])
        ctes.append(
            f"windows{i} AS (SELECT * EXCLUDE ({helpers}), {', '.join(exprs)} FROM union{i} "
            f"WINDOW {', '.join(frames)} QUALIFY __ev = 1)"
        )
        return f"windows{i}"


def _aggregate(feature: Window, set_plan: SetPlan, one: str, frame: str) -> str:
    if feature.column is None:
        return f"count({one}) OVER {frame}"
    value = set_plan.value_column(feature.column)
    count = f"count({value}) OVER {frame}"
    if feature.agg == "count":
        return count
    if feature.agg == "sum":
        return f"coalesce(sum({value}) OVER {frame}, CAST(0 AS DOUBLE))"
    if feature.agg == "mean":
        return f"CASE WHEN {count} = 0 THEN {_literal(feature.default)} ELSE sum({value}) OVER {frame} / {count} END"
    return f"coalesce({feature.agg}({value}) OVER {frame}, {_literal(feature.default)})"


def _offline(source: Source) -> Source:
    """The source whose rows hold a feature set's values over time."""
    return source.offline if isinstance(source, CallableSource) else source


def _existing(path: Path, source: str) -> Path:
    if not path.exists():
        raise ConfigError(f"source '{source}': {path} does not exist")
    return path


def _parquet_files(path: Path) -> list[Path]:
    """Events given as a Parquet file or a directory of them (a dataset)."""
    if path.is_dir():
        return [f.path for f in dataset_files(path, "events")]
    if not path.exists():
        raise ConfigError(f"events: {path} does not exist; give a DataFrame, a Parquet file or a directory of them")
    return [path]

