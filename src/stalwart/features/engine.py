"""The point-in-time engine: one implementation of every feature, for both paths.

Given *queries* (entity keys and an as-of time each) and a source's *rows* (entity keys,
event time, a tie-break order, value columns), :func:`compute` answers each query using
only the rows of its entity at or before its time:

- ``Latest``: the value of the last row (by time, then by the source's order) at or
  before ``t``, if it is not older than ``max_age``;
- ``Window``: count, sum, mean, min or max over the rows with ``t - window < time <= t``;
- ``Transform``: the user's vectorised function of the above and request-time values.

Training sets call it with a million events and the whole source; online resolution calls
it with a request's entities, ``t = now`` and the rows one query fetched. Same code, same
answers: this is what makes the two paths agree.

:func:`compute` is two steps, which the online cache uses apart: :func:`compute_base`
(``Latest`` and ``Window``, what depends on source rows, cacheable per entity) and
:func:`apply_transforms` (per request, over those columns and the request's values).
``compute_base`` also says, per query, until when its values hold with no new write
(``valid_until_ns``): the first of a window's oldest row leaving it, a latest value
passing its ``max_age``, and a row already stored with a later time coming into view.
A cached value is fresh until then at the latest, so windows slide exactly.

How it stays vectorised: entity keys become integer codes, times become ranks among every
time involved, and ``code * (ranks + 1) + rank`` orders rows by entity then time in one
int64. A ``searchsorted`` then finds each window's row range, and ``ufunc.reduceat`` over
the interleaved ``[lo, hi)`` bounds of queries sorted the same way aggregates every window
in one pass over the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stalwart.errors import ConfigError, FeatureError
from stalwart.project import Feature, FeatureSet, Latest, RequestField, Transform, Window

__all__ = [
    "NEVER",
    "Base",
    "Computed",
    "Queries",
    "SourceRows",
    "apply_transforms",
    "compute",
    "compute_base",
    "empty_rows",
]

Column = np.ndarray[Any, Any]
NEVER = int(np.iinfo(np.int64).max)
"""``valid_until_ns`` of a value that no passage of time alone can change."""


@dataclass(slots=True)
class SourceRows:
    """Rows of one source: key columns, times (int64 ns), tie-break order, value columns."""

    keys: list[Column]
    ts: np.ndarray[Any, np.dtype[np.int64]]
    order: np.ndarray[Any, np.dtype[np.int64]]
    columns: dict[str, Column]

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(slots=True)
class Queries:
    """What to answer: one entity key tuple and one as-of time (int64 ns) per row."""

    keys: list[Column]
    ts: np.ndarray[Any, np.dtype[np.int64]]

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(slots=True)
class Base:
    """A feature set's row-dependent columns for the queries, in query order; which
    entities had any row at or before their time; and, per query, the first instant
    (int64 ns) at which a value may change without a new write (``NEVER`` if none)."""

    columns: dict[str, Column]
    found: np.ndarray[Any, np.dtype[np.bool_]]
    valid_until_ns: np.ndarray[Any, np.dtype[np.int64]]


@dataclass(slots=True)
class Computed:
    """A feature set's columns for the queries, in query order, and which entities had
    any row at or before their time."""

    columns: dict[str, Column]
    found: np.ndarray[Any, np.dtype[np.bool_]]


def empty_rows(n_keys: int, columns: Sequence[str]) -> SourceRows:
    return SourceRows(
        keys=[np.empty(0, dtype=object) for _ in range(n_keys)],
        ts=np.empty(0, dtype=np.int64),
        order=np.empty(0, dtype=np.int64),
        columns={c: np.empty(0, dtype=object) for c in columns},
    )


def compute(
    feature_set: FeatureSet,
    queries: Queries,
    rows: SourceRows,
    request: Mapping[tuple[str, str], Column] | None = None,
    names: Sequence[str] | None = None,
) -> Computed:
    """The features ``names`` of ``feature_set`` (all when None, plus what their transforms
    read) for every query, using only rows at or before it: :func:`compute_base`, then
    :func:`apply_transforms`."""
    base = compute_base(feature_set, queries, rows, names)
    columns = apply_transforms(feature_set, base.columns, request, len(queries), names)
    return Computed(columns=columns, found=base.found)


def compute_base(
    feature_set: FeatureSet,
    queries: Queries,
    rows: SourceRows,
    names: Sequence[str] | None = None,
) -> Base:
    """The ``Latest`` and ``Window`` features among ``names`` and what their transforms
    read (every one when None): what depends on source rows. Each query also gets the
    instant its values stop holding without a new write (:attr:`Base.valid_until_ns`)."""
    features = [f for f in feature_set.closure(names) if isinstance(f, Latest | Window)]
    m = len(queries)
    q_codes, r_codes = _joint_codes(queries.keys, rows.keys)
    windows = sorted({f.window_ns for f in features if isinstance(f, Window)})
    times = [rows.ts, queries.ts, *(queries.ts - w for w in windows)]
    table = _sorted_unique(np.concatenate(times)) if m or len(rows) else np.empty(0, dtype=np.int64)
    radix = np.int64(len(table) + 1)

    def composite(codes: Column, ts: Column) -> Column:
        return codes * radix + np.searchsorted(table, ts).astype(np.int64)

    perm = np.lexsort((rows.order, rows.ts, r_codes))
    r_ts = rows.ts[perm]
    r_key = composite(r_codes[perm], r_ts)
    qperm = np.lexsort((queries.ts, q_codes))
    q_codes_s = q_codes[qperm]
    q_ts_s = queries.ts[qperm]
    hi = np.searchsorted(r_key, composite(q_codes_s, q_ts_s), side="right")
    start = np.searchsorted(r_key, q_codes_s * radix, side="left")
    found_s = hi > start
    bounds = {w: np.searchsorted(r_key, composite(q_codes_s, q_ts_s - w), side="right") for w in windows}

    # Several features read the same column, and several windows count the same rows:
    # sort each column and count each (column, window) once.
    sorted_values: dict[str, Column] = {}
    counts: dict[tuple[str, int], Column] = {}

    def values_of(name: str) -> Column:
        if name not in sorted_values:
            sorted_values[name] = _column(rows, name, feature_set)[perm]
        return sorted_values[name]

    sorted_columns: dict[str, Column] = {}
    for feature in features:
        if isinstance(feature, Latest):
            sorted_columns[feature.name] = _latest(feature, values_of(feature.column), r_ts, q_ts_s, hi, found_s)
        else:
            lo = bounds[feature.window_ns]
            window_values = None if feature.column is None else values_of(feature.column)
            sorted_columns[feature.name] = _window(feature, window_values, lo, hi, feature_set, counts)

    end = np.searchsorted(r_key, (q_codes_s + 1) * radix, side="left")
    until_s = _valid_until(features, r_ts, q_ts_s, hi, end, found_s, bounds)
    unsort = np.empty(m, dtype=np.int64)
    unsort[qperm] = np.arange(m, dtype=np.int64)
    columns = {name: col[unsort] for name, col in sorted_columns.items()}
    return Base(columns=columns, found=found_s[unsort], valid_until_ns=until_s[unsort])


def apply_transforms(
    feature_set: FeatureSet,
    columns: Mapping[str, Column],
    request: Mapping[tuple[str, str], Column] | None,
    m: int,
    names: Sequence[str] | None = None,
) -> dict[str, Column]:
    """``columns`` (from :func:`compute_base`, ``m`` rows) plus the transforms among
    ``names`` and what they read, over those columns and the request-time values."""
    out = dict(columns)
    for feature in feature_set.closure(names):
        if isinstance(feature, Transform):
            out[feature.name] = _transform(feature, out, request or {}, m, feature_set)
    return out


def _valid_until(
    features: Sequence[Feature],
    r_ts: Column,
    q_ts: Column,
    hi: Column,
    end: Column,
    found: Column,
    bounds: Mapping[int, Column],
) -> Column:
    """Per (sorted) query, the first instant a value may differ with no new row written:
    a window's oldest row leaving it, a latest value growing older than ``max_age``, or a
    row already stored with a later time coming into view. ``NEVER`` when none applies."""
    m = len(q_ts)
    until = np.full(m, NEVER, dtype=np.int64)
    if m == 0 or len(r_ts) == 0:
        return until
    last = len(r_ts) - 1
    # The entity's first row after the query time: it enters every window and becomes
    # the latest value.
    ahead = hi < end
    until = np.where(ahead, r_ts[np.minimum(hi, last)], until)
    for w, lo in bounds.items():
        inside = hi > lo
        until = np.where(inside, np.minimum(until, r_ts[np.minimum(lo, last)] + w), until)
    ages = {f.max_age_ns for f in features if isinstance(f, Latest) and f.max_age_ns is not None}
    if ages:
        newest = r_ts[np.maximum(hi - 1, 0)]
        for age in ages:
            # Valid while t - ts <= age: it stops one nanosecond after ts + age.
            expires = newest + age + 1
            live = found & (expires > q_ts)
            until = np.where(live, np.minimum(until, expires), until)
    return until


def _sorted_unique(values: Column) -> Column:
    """np.unique by sorting: for millions of distinct int64 times, numpy's hash-based
    unique is several times slower than one sort."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered
    keep = np.empty(len(ordered), dtype=np.bool_)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _joint_codes(q_keys: list[Column], r_keys: list[Column]) -> tuple[Column, Column]:
    """Integer codes for entity keys, consistent between queries and rows."""
    m = len(q_keys[0]) if q_keys else 0
    q_codes = np.zeros(m, dtype=np.int64)
    r_codes = np.zeros(len(r_keys[0]) if r_keys else 0, dtype=np.int64)
    for q_col, r_col in zip(q_keys, r_keys, strict=True):
        q_col, r_col = _comparable(q_col, r_col)
        uniques, inverse = np.unique(np.concatenate([q_col, r_col]), return_inverse=True)
        q_codes = q_codes * len(uniques) + inverse[:m]
        r_codes = r_codes * len(uniques) + inverse[m:]
    return q_codes, r_codes


def _comparable(a: Column, b: Column) -> tuple[Column, Column]:
    # Keys that can never match (a string "17" against an integer 17) must not make
    # np.unique compare str with int: give both sides one type so they simply differ.
    if a.dtype == b.dtype or (a.dtype.kind in "iu" and b.dtype.kind in "iu"):
        return a, b
    if len(b) == 0:
        return a, b.astype(a.dtype)
    if len(a) == 0:
        return a.astype(b.dtype), b
    return a.astype(str).astype(object), b.astype(str).astype(object)


def _column(rows: SourceRows, name: str, feature_set: FeatureSet) -> Column:
    try:
        return rows.columns[name]
    except KeyError:
        raise FeatureError(
            f"source '{feature_set.source.name}' has no column '{name}' (feature set "
            f"'{feature_set.name}'); it has {', '.join(rows.columns) or 'no value columns'}"
        ) from None


def _latest(feature: Latest, values: Column, r_ts: Column, q_ts: Column, hi: Column, found: Column) -> Column:
    idx = np.maximum(hi - 1, 0)
    valid = found.copy()
    if feature.max_age_ns is not None and len(r_ts):
        valid &= (q_ts - r_ts[idx]) <= feature.max_age_ns
    if len(values) == 0:
        return _filled(np.empty(len(hi), dtype=np.float64 if values.dtype.kind in "iuf" else object), ~valid, feature.default)
    picked = values[idx]
    picked = picked.astype(np.float64) if picked.dtype.kind in "iub" else picked.copy()
    if picked.dtype.kind == "f":
        missing = ~valid | np.isnan(picked)
    else:
        missing = ~valid | _is_none(picked)
    return _filled(picked, missing, feature.default)


def _window(
    feature: Window,
    values: Column | None,
    lo: Column,
    hi: Column,
    feature_set: FeatureSet,
    counts: dict[tuple[str, int], Column],
) -> Column:
    m = len(hi)
    if values is None:
        return (hi - lo).astype(np.int64)
    if values.dtype.kind not in "iufb":
        if feature.agg != "count":
            raise FeatureError(
                f"feature '{feature.name}' takes the {feature.agg} of '{feature.column}', which "
                f"holds non-numbers; only count works on such a column"
            )
        present = ~_is_none(values)
        return _reduce(np.add, present.astype(np.int64), lo, hi, 0).astype(np.int64)
    numbers = values.astype(np.float64, copy=False)
    present = ~np.isnan(numbers)
    key = (feature.column or "", feature.window_ns)
    count = counts.get(key)
    if count is None:
        count = counts[key] = _reduce(np.add, present.astype(np.int64), lo, hi, 0)
    if feature.agg == "count":
        return count.astype(np.int64)
    if m == 0:
        return np.empty(0, dtype=np.float64)
    if feature.agg in ("sum", "mean"):
        total = _reduce(np.add, np.where(present, numbers, 0.0), lo, hi, 0.0)
        if feature.agg == "sum":
            return total
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
        return _filled(mean, count == 0, feature.default)
    ufunc = np.minimum if feature.agg == "min" else np.maximum
    fill = np.inf if feature.agg == "min" else -np.inf
    extreme = _reduce(ufunc, np.where(present, numbers, fill), lo, hi, fill)
    return _filled(extreme, count == 0, feature.default)


def _reduce(ufunc: np.ufunc, values: Column, lo: Column, hi: Column, empty: Any) -> Column:
    """``ufunc`` over ``values[lo[i]:hi[i]]`` for every i, in one ``reduceat`` call.

    Queries come sorted by entity then time, so the junk slices between consecutive
    windows (``[hi[i], lo[i+1])``) add up to at most one pass over the rows.
    """
    m = len(lo)
    if m == 0:
        return np.empty(0, dtype=values.dtype)
    padded = np.empty(len(values) + 1, dtype=values.dtype)
    padded[:-1] = values
    padded[-1] = empty
    index = np.empty(2 * m, dtype=np.int64)
    index[0::2] = lo
    index[1::2] = hi
    out = ufunc.reduceat(padded, index)[0::2]
    return np.where(hi > lo, out, np.asarray(empty, dtype=values.dtype))


def _is_none(values: Column) -> Column:
    return np.frompyfunc(lambda v: v is None, 1, 1)(values).astype(np.bool_)  # type: ignore[no-any-return]


def _filled(column: Column, missing: Column, default: Any) -> Column:
    if not missing.any():
        return column
    if default is None:
        if column.dtype.kind == "f":
            column[missing] = np.nan
        else:
            column[missing] = None
        return column
    if column.dtype.kind == "f" and not isinstance(default, int | float):
        column = column.astype(object)
    column[missing] = default
    return column


def _transform(
    feature: Transform,
    columns: Mapping[str, Column],
    request: Mapping[tuple[str, str], Column],
    m: int,
    feature_set: FeatureSet,
) -> Column:
    args = []
    for item in feature.inputs:
        if isinstance(item, RequestField):
            value = request.get((item.source, item.name))
            if value is None:
                raise ConfigError(
                    f"transform '{feature.name}' needs request value '{item.name}' of "
                    f"'{item.source}', which was not given"
                )
            args.append(value)
        else:
            args.append(columns[item])
    try:
        with np.errstate(all="ignore"):
            result = np.asarray(feature.fn(*args))
    except Exception as exc:  # the user's transform can raise anything: name it and say why
        raise FeatureError(
            f"transform '{feature.name}' of feature set '{feature_set.name}' raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if result.shape != (m,):
        if result.ndim == 0:
            return np.full(m, result.item())
        raise FeatureError(
            f"transform '{feature.name}' returned shape {result.shape}; it must return one "
            f"value per row ({m})"
        )
    return result
