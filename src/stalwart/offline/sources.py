"""Source rows and events as Arrow streams, for engines that do not read them natively.

DuckDB and Spark read Parquet themselves (files, directories, hive partitions). What they
cannot reach on this machine's terms (a SQLite or PostgreSQL table: DuckDB's scanners and
Spark's JDBC drivers are downloads of their own) arrives through SQLAlchemy, streamed in
batches of Arrow rows: never all at once, never through pandas. Each row carries its
time in int64 nanoseconds, converted by :func:`stalwart.features.timecodec.to_ns` exactly
as the numpy engine converts it, and its tie-break order (the table's integer primary
key, or ``order_by``). CSV files come through pyarrow's streaming reader, numbered in file
order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Boolean, Float, Integer, Numeric

from stalwart._optional import require
from stalwart.errors import ConfigError
from stalwart.features.readers import SqlReader
from stalwart.features.timecodec import to_ns
from stalwart.offline.plan import Plan
from stalwart.project import SqlSource
from stalwart.storage import Database

__all__ = ["ORDER", "ROW", "TS", "csv_batches", "events_table", "sql_batches", "sql_schema", "with_event_columns"]

TS = "__ts"  # the event or row time, int64 ns (UTC)
ORDER = "__ord"  # a source row's tie-break order
ROW = "__row"  # an in-memory event's position
_CHUNK = 65_536


def _pa() -> Any:
    return require("pyarrow", extra="duckdb", purpose="offline engines")


def sql_schema(reader: SqlReader, columns: Sequence[str]) -> Any:
    """The Arrow schema of a SQL source's rows: keys and values typed from the table's
    columns (integers, floats, booleans; anything else as strings), then time and order."""
    pa = _pa()
    table = reader.table

    def kind(name: str) -> Any:
        column_type = table.c[name].type
        if isinstance(column_type, Boolean):
            return pa.bool_()
        if isinstance(column_type, Integer):
            return pa.int64()
        if isinstance(column_type, Float | Numeric):
            return pa.float64()
        return pa.string()

    keys = list(reader.source.entity.keys)
    return pa.schema([*(pa.field(k, kind(k)) for k in keys), pa.field(TS, pa.int64()), pa.field(ORDER, pa.int64()), *(pa.field(c, kind(c)) for c in columns)])


def sql_batches(source: SqlSource, db: Database, columns: Sequence[str]) -> Any:
    """A SQL source's rows as a ``pyarrow.RecordBatchReader`` (see the module docstring)."""
    pa = _pa()
    reader = SqlReader(source, db)
    schema = sql_schema(reader, columns)
    query = reader.scan(columns)
    n_keys = len(source.entity.keys)

    def generate() -> Iterator[Any]:
        with db.read() as conn:
            result = conn.execution_options(stream_results=True, yield_per=_CHUNK).execute(query)
            for chunk in result.partitions(_CHUNK):
                transposed = list(zip(*chunk, strict=True))
                stamps = np.empty(len(chunk), dtype=object)
                stamps[:] = transposed[n_keys]
                arrays = [pa.array(_plain(transposed[i]), type=schema.field(i).type) for i in range(n_keys)]
                arrays.append(pa.array(to_ns(stamps), type=pa.int64()))
                arrays.append(pa.array(np.asarray(transposed[n_keys + 1], dtype=np.int64)))
                for j in range(len(columns)):
                    arrays.append(pa.array(_plain(transposed[n_keys + 2 + j]), type=schema.field(n_keys + 2 + j).type))
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, generate())


def _plain(values: Sequence[Any]) -> list[Any]:
    # Decimals and datetimes as Arrow takes them for the column's type; NaN stays a float.
    return [v if v is None or isinstance(v, bool | int | float | str) else (float(v) if hasattr(v, "as_tuple") else str(v)) for v in values]


def csv_batches(path: Path, source: str) -> Any:
    """A CSV file's rows as a ``pyarrow.RecordBatchReader`` with :data:`ORDER` (the row's
    position in the file) appended."""
    pa = _pa()
    csv = require("pyarrow.csv", extra="duckdb", purpose="CSV sources")
    if not path.exists():
        raise ConfigError(f"source '{source}': {path} does not exist")
    stream = csv.open_csv(path)
    schema = stream.schema.append(pa.field(ORDER, pa.int64()))

    def generate() -> Iterator[Any]:
        start = 0
        for batch in stream:
            order = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
            start += batch.num_rows
            yield pa.RecordBatch.from_arrays([*batch.columns, order], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, generate())


def events_table(events: Any, columns: Sequence[str], timestamp: str) -> Any:
    """In-memory events (a pandas DataFrame) as an Arrow table of ``columns`` plus
    :data:`TS` (converted by ``to_ns``, as the numpy engine does) and :data:`ROW`."""
    pa = _pa()
    present = [c for c in columns if c != timestamp]
    table = pa.Table.from_pandas(events[present], preserve_index=False) if present else pa.table({})
    table = table.append_column(TS, pa.array(to_ns(events[timestamp]), type=pa.int64()))
    return table.append_column(ROW, pa.array(np.arange(len(events), dtype=np.int64)))


def with_event_columns(batches: Iterable[Any], events: Any, plan: Plan, partition: str | None) -> Iterator[Any]:
    """Output batches of in-memory events: each batch's feature columns with the events'
    keys, time and label taken by :data:`ROW` (exactly as given, time zone and all)."""
    pa = _pa()
    own = [c for c in plan.output_columns() if c not in plan.features]
    table = pa.Table.from_pandas(events[own], preserve_index=False)
    for batch in batches:
        names = batch.schema.names
        taken = table.take(batch.column(names.index(ROW)))
        columns = {name: taken.column(name).combine_chunks() for name in own}
        columns.update({name: batch.column(names.index(name)) for name in plan.features})
        if partition is not None:
            columns[partition] = batch.column(names.index(partition))
        order = [*plan.output_columns(), *([partition] if partition else [])]
        yield pa.RecordBatch.from_arrays([columns[n] for n in order], names=order)
