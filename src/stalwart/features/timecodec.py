"""Time for features: timestamps as int64 nanoseconds (UTC). Durations are
:mod:`stalwart.durations`.

Both the offline and the online path convert every timestamp to the same representation
before any comparison, so "at or before the event time" means the same thing on both.
Accepted timestamps: numpy/pandas datetimes (naive ones are taken as UTC), Python
datetimes, epoch seconds (int or float), and ISO 8601 strings.

>>> int(to_ns([0.5])[0])
500000000
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np

from stalwart.durations import NS
from stalwart.errors import ConfigError

__all__ = ["now_ns", "to_ns"]


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
