"""Reading the prediction log back: ``stalwart.read_predictions``, ``stalwart log`` and the
server's ``GET /v1/predictions/{id}`` share what is here.

Times are given as a :class:`datetime.datetime` (naive ones are local time, as
``datetime.timestamp`` reads them), nanoseconds since the epoch (an ``int``), an ISO 8601
string, or a duration meaning "that long ago" (``"15m"``, ``"1h30m"``, a
:class:`~datetime.timedelta`; the grammar of :mod:`stalwart.durations`).

>>> parse_time("1h", "since", now_ns=7_200 * NS) == 3_600 * NS
True
>>> parse_time("1970-01-01T00:00:01.5Z", "since")
1500000000
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from stalwart._optional import require
from stalwart.config import Settings, load_settings
from stalwart.durations import NS, parse_ns
from stalwart.errors import ConfigError, PredictionLogError
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks import PredictionStore, Query, open_store

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TimeSpec", "build_query", "parse_time", "read_predictions", "reading_store", "records_table"]

TimeSpec = dt.datetime | dt.timedelta | int | str
"""A point in time for ``since``/``until`` (see the module docstring)."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TIME_HINT = (
    "give a duration meaning that long ago ('15m', '2h', '7d'), an ISO time "
    "('2024-05-01T12:00:00Z'), a datetime, or nanoseconds since the epoch"
)

# Scalar columns of the Arrow table, in order, with their types (by name, so pyarrow is
# imported only when a table is built).
_SCALARS: tuple[tuple[str, str], ...] = (
    ("request_id", "string"),
    ("entrypoint", "string"),
    ("deployment", "string"),
    ("variant", "string"),
    ("model", "string"),
    ("version", "int64"),
    ("status", "int64"),
    ("error", "string"),
    ("latency_ms", "float64"),
    ("degraded", "string"),
    ("degraded_reason", "string"),
    ("trace_id", "string"),
    ("rows", "int64"),
    ("inputs_hash", "string"),
    ("features_as_of_ns", "int64"),
    ("chain", "string"),
    ("seq", "int64"),
    ("prev_hash", "string"),
    ("hash", "string"),
)
# Nested fields: Arrow structs and lists as pyarrow infers them from the values.
_NESTED = ("entities", "features", "feature_sets", "inputs", "outputs", "validation", "cache", "timings")


def datetime_ns(value: dt.datetime) -> int:
    """``value`` as exact nanoseconds since the epoch (a naive datetime is local time)."""
    aware = value if value.tzinfo is not None else value.astimezone()
    delta = aware - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1_000


def parse_time(value: TimeSpec | None, what: str, *, now_ns: int | None = None) -> int | None:
    """``value`` as nanoseconds since the epoch (None stays None); ``what`` names it in
    errors. Durations count back from ``now_ns`` (the clock's now when None)."""
    if value is None:
        return None
    now = time.time_ns() if now_ns is None else now_ns
    if isinstance(value, bool):
        raise ConfigError(f"{what}: {value!r} is not a time; {_TIME_HINT}")
    if isinstance(value, dt.datetime):
        return datetime_ns(value)
    if isinstance(value, int):
        return value
    if isinstance(value, dt.timedelta):
        return now - parse_ns(value, what, positive=False)
    if isinstance(value, str):
        try:
            return now - parse_ns(value, what, positive=False)
        except ConfigError:
            pass  # not a duration: an ISO time, or neither
        try:
            return datetime_ns(dt.datetime.fromisoformat(value.strip()))
        except ValueError:
            raise ConfigError(f"{what}: {value!r} is neither a duration nor an ISO time; {_TIME_HINT}") from None
    raise ConfigError(f"{what}: {value!r} is not a time; {_TIME_HINT}")


def build_query(
    *,
    deployment: str | None = None,
    model: str | None = None,
    version: int | None = None,
    status: int | None = None,
    errors_only: bool = False,
    degraded: bool | None = None,
    since: TimeSpec | None = None,
    until: TimeSpec | None = None,
    limit: int = 1000,
    now_ns: int | None = None,
) -> Query:
    """The store :class:`~stalwart.monitoring.sinks.Query` for these filters, checked."""
    if limit < 1:
        raise ConfigError(f"limit: {limit} is not a number of records; give 1 or more")
    now = time.time_ns() if now_ns is None else now_ns
    return Query(
        deployment=deployment,
        model=model,
        version=version,
        status=status,
        errors_only=errors_only,
        degraded=degraded,
        since_ns=parse_time(since, "since", now_ns=now),
        until_ns=parse_time(until, "until", now_ns=now),
        limit=limit,
    )


@contextmanager
def reading_store(settings: Settings) -> Iterator[PredictionStore]:
    """The configured log's store, open for the block; PredictionLogError saying why when
    the log cannot be read back (it is off, or goes to NATS)."""
    if settings.prediction_log == "off":
        raise PredictionLogError(
            "the prediction log is off (STALWART_PREDICTION_LOG=off): nothing is recorded; "
            "set it to auto, sql or parquet to keep every request"
        )
    store = open_store(settings)
    if store is None:
        raise PredictionLogError(
            f"the prediction log goes to {settings.prediction_log}, which cannot be read back "
            f"here; read its stream with a consumer, or log to sql or parquet"
        )
    try:
        yield store
    finally:
        store.close()


def records_table(records: Sequence[PredictionRecord]) -> pa.Table:
    """``records`` as an Arrow table: one row each, scalar fields as typed columns (``time``
    as ``timestamp[ns, UTC]``), nested ones as inferred structs and lists. A nested column
    whose values Arrow cannot type as one (a feature that is a number in one record and a
    string in another) is kept as each value's JSON text instead."""
    pa_ = _pyarrow()
    columns: dict[str, Any] = {"time": pa_.array([r.time_ns for r in records], pa_.timestamp("ns", tz="UTC"))}
    for name, kind in _SCALARS:
        columns[name] = pa_.array([getattr(r, name) for r in records], getattr(pa_, kind)())
    for name in _NESTED:
        values = [getattr(r, name) for r in records]
        try:
            columns[name] = pa_.array(values)
        except (pa_.ArrowInvalid, pa_.ArrowTypeError, OverflowError):
            columns[name] = pa_.array([None if v is None else json.dumps(v) for v in values], pa_.string())
    table: pa.Table = pa_.table(columns)
    return table


def _pyarrow() -> Any:
    return require("pyarrow", extra="features", purpose="reading the prediction log as a table")


def read_predictions(
    *,
    deployment: str | None = None,
    model: str | None = None,
    version: int | None = None,
    status: int | None = None,
    errors_only: bool = False,
    degraded: bool | None = None,
    since: TimeSpec | None = None,
    until: TimeSpec | None = None,
    limit: int = 1000,
    settings: Settings | None = None,
) -> pa.Table:
    """Prediction records from the log the ``STALWART_*`` environment (or ``settings``)
    configures, newest first, as a :class:`pyarrow.Table` (``.to_pandas()`` for a DataFrame).

    Every filter given must hold: ``errors_only`` keeps statuses of 400 and above,
    ``degraded`` True only answers a fallback gave (False only the others). ``since`` is
    inclusive and ``until`` exclusive; each is a datetime, nanoseconds since the epoch, an
    ISO time or a duration meaning that long ago (``since="1h"``). At most ``limit`` rows.

    >>> recent_errors = stalwart.read_predictions(deployment="fraud", errors_only=True, since="1h")  # doctest: +SKIP
    >>> recent_errors.to_pandas()[["time", "status", "error"]]                                       # doctest: +SKIP

    Needs pyarrow (``pip install 'stalwart[features]'``). Raises PredictionLogError when the
    log is off or cannot be read back, SinkUnavailable when its store cannot be reached.
    """
    _pyarrow()  # before any I/O: a missing extra is the first thing to hear about
    query = build_query(
        deployment=deployment, model=model, version=version, status=status, errors_only=errors_only,
        degraded=degraded, since=since, until=until, limit=limit,
    )
    with reading_store(settings or load_settings()) as store:
        records = store.query(query)
    return records_table(records)
