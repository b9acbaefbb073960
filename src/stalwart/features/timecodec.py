"""Time for features: durations as nanoseconds, timestamps as int64 nanoseconds (UTC).

Both the offline and the online path convert every timestamp to the same representation
before any comparison, so "at or before the event time" means the same thing on both.
Accepted timestamps: numpy/pandas datetimes (naive ones are taken as UTC), Python
datetimes, epoch seconds (int or float), and ISO 8601 strings.

>>> duration_ns("30d") == 30 * 86_400 * 10**9
True
>>> int(to_ns([0.5])[0])
500000000
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import numpy as np

from stalwart.errors import ConfigError

__all__ = ["NS", "Duration", "duration_ns", "format_duration", "now_ns", "to_ns"]

NS = 1_000_000_000
Duration = str | int | float | dt.timedelta

_UNITS = {"ms": 10**6, "s": NS, "m": 60 * NS, "h": 3600 * NS, "d": 86_400 * NS, "w": 7 * 86_400 * NS}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def duration_ns(value: Duration) -> int:
    """A duration as integer nanoseconds: ``"15m"``, ``"24h"``, ``"30d"``, seconds, or a timedelta."""
    if isinstance(value, dt.timedelta):
        ns = int(value.total_seconds() * NS)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ns = int(value * NS)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        ns = int(float(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise ConfigError(
            f"{value!r} is not a duration; write it like '90s', '15m', '24h', '30d' or '2w'"
        )
    if ns <= 0:
        raise ConfigError(f"duration {value!r} must be positive")
    return ns


def format_duration(ns: int) -> str:
    """The shortest exact spelling of a duration (used in definitions' hashes and docs)."""
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = _UNITS[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / NS}s"


def now_ns() -> int:
    return time.time_ns()


def to_ns(values: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Timestamps (a column, a list or a scalar) as int64 nanoseconds since the epoch, UTC."""
    array = _as_array(values)
    kind = array.dtype.kind
    if kind == "M":
        return array.astype("datetime64[ns]").astype(np.int64)
    if kind in "iu":
        return array.astype(np.int64) * NS
    if kind == "f":
        if not np.isfinite(array).all():
            raise ConfigError("a timestamp is NaN or infinite; every row needs a time")
        return np.round(array * NS).astype(np.int64)
    if kind in "OU":
        return np.fromiter((_one_to_ns(v) for v in array.ravel()), dtype=np.int64, count=array.size)
    raise ConfigError(f"cannot read timestamps of type {array.dtype}; use datetimes or epoch seconds")


def _as_array(values: Any) -> np.ndarray[Any, Any]:
    dtype = getattr(values, "dtype", None)
    if dtype is not None and getattr(dtype, "tz", None) is not None:
        # A timezone-aware pandas column: its UTC instants, as naive datetime64.
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    to_numpy = getattr(values, "to_numpy", None)
    if callable(to_numpy):
        values = to_numpy()
    if isinstance(values, dt.datetime | str | int | float | np.datetime64):
        values = [values]
    return np.asarray(values)


def _one_to_ns(value: Any) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta: dt.timedelta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"timestamp {value!r} is not ISO 8601") from None
        return _one_to_ns(parsed)
    if isinstance(value, np.datetime64):
        return int(np.int64(value.astype("datetime64[ns]").astype(np.int64)))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value * NS)
    raise ConfigError(f"cannot read {value!r} as a timestamp")
