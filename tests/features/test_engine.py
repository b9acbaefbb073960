"""The point-in-time engine: no future leakage, exact window edges, ties, max age, and
agreement with a brute-force reference on random data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.durations import NS
from stalwart.features.engine import (
    NEVER,
    Queries,
    SourceRows,
    apply_transforms,
    compute,
    compute_base,
)
from stalwart.project import (
    Entity,
    FeatureSet,
    FileSource,
    Latest,
    RequestSource,
    Transform,
    Window,
)

CARD = Entity("card", keys=["card_id"])
SOURCE = FileSource("tx", path="tx.parquet", entity=CARD, timestamp="ts")
TXN = RequestSource("txn", fields={"amount": "float"})


def _set(*features: Any) -> FeatureSet:
    return FeatureSet("s", entity=CARD, source=SOURCE, features=list(features))


def _rows(cards: list[int], seconds: list[float], amounts: list[float]) -> SourceRows:
    return SourceRows(
        keys=[np.asarray(cards)],
        ts=np.round(np.asarray(seconds) * NS).astype(np.int64),
        order=np.arange(len(cards), dtype=np.int64),
        columns={"amount": np.asarray(amounts, dtype=np.float64)},
    )


def _ask(cards: list[int], seconds: list[float]) -> Queries:
    return Queries(keys=[np.asarray(cards)], ts=np.round(np.asarray(seconds) * NS).astype(np.int64))


def test_a_row_just_after_the_event_never_counts() -> None:
    """Rows 1 ns after the event time are invisible to every kind of feature."""
    fs = _set(Window("n", agg="count", window="1h"), Window("total", agg="sum", column="amount", window="1h"), Latest("last", column="amount"))
    rows = _rows([1, 1], [100.0, 100.000000001], [5.0, 500.0])
    out = compute(fs, _ask([1], [100.0]), rows).columns
    assert out["n"].tolist() == [1]
    assert out["total"].tolist() == [5.0]
    assert out["last"].tolist() == [5.0]


def test_a_row_at_exactly_the_event_time_counts() -> None:
    """'At or before': a row stamped with the event's own time is included."""
    fs = _set(Window("n", agg="count", window="1h"))
    out = compute(fs, _ask([1], [100.0]), _rows([1], [100.0], [1.0])).columns
    assert out["n"].tolist() == [1]


def test_window_is_open_at_its_start_and_closed_at_its_end() -> None:
    """A window of w over time t holds rows with t - w < time <= t."""
    fs = _set(Window("n", agg="count", window="10s"))
    rows = _rows([1, 1, 1], [90.0, 90.001, 100.0], [1.0, 1.0, 1.0])
    assert compute(fs, _ask([1], [100.0]), rows).columns["n"].tolist() == [2]


def test_latest_respects_max_age_inclusively() -> None:
    """A latest value exactly max_age old is used; one a millisecond older is not."""
    fs = _set(Latest("last", column="amount", max_age="10s", default=-1.0))
    rows = _rows([1, 2], [90.0, 89.999], [7.0, 8.0])
    out = compute(fs, _ask([1, 2], [100.0, 100.0]), rows).columns["last"]
    assert out.tolist() == [7.0, -1.0]


def test_rows_sharing_a_timestamp_break_ties_by_source_order() -> None:
    """Several rows at one time all count in windows; 'latest' is the last in source order."""
    fs = _set(Window("n", agg="count", window="1h"), Latest("last", column="amount"))
    rows = _rows([1, 1, 1], [50.0, 50.0, 50.0], [1.0, 2.0, 3.0])
    out = compute(fs, _ask([1], [50.0]), rows).columns
    assert out["n"].tolist() == [3]
    assert out["last"].tolist() == [3.0]


def test_entities_never_see_each_others_rows_and_unknown_ones_are_not_found() -> None:
    fs = _set(Window("n", agg="count", window="1d"), Window("avg", agg="mean", column="amount", window="1d"))
    rows = _rows([1, 2, 2], [10.0, 10.0, 20.0], [1.0, 10.0, 30.0])
    result = compute(fs, _ask([2, 1, 3], [30.0, 30.0, 30.0]), rows)
    assert result.columns["n"].tolist() == [2, 1, 0]
    assert result.columns["avg"][:2].tolist() == [20.0, 1.0]
    assert math.isnan(result.columns["avg"][2])
    assert result.found.tolist() == [True, True, False]


def test_defaults_fill_empty_windows_and_nulls_are_ignored() -> None:
    fs = _set(
        Window("mx", agg="max", column="amount", window="1h", default=0.0),
        Window("n", agg="count", column="amount", window="1h"),
        Window("sum", agg="sum", column="amount", window="1h"),
    )
    rows = _rows([1, 1], [10.0, 20.0], [np.nan, 4.0])
    out = compute(fs, _ask([1, 9], [30.0, 30.0]), rows).columns
    assert out["mx"].tolist() == [4.0, 0.0]
    assert out["n"].tolist() == [1, 0]
    assert out["sum"].tolist() == [4.0, 0.0]


def test_transforms_combine_features_with_request_values() -> None:
    fs = _set(
        Window("avg", agg="mean", column="amount", window="1d", default=0.0),
        Transform("ratio", inputs=[TXN.amount, "avg"], fn=lambda a, m: a / np.maximum(m, 1.0)),
    )
    rows = _rows([1, 1], [10.0, 20.0], [10.0, 30.0])
    out = compute(fs, _ask([1, 2], [30.0, 30.0]), rows, {("txn", "amount"): np.asarray([40.0, 5.0])}).columns
    assert out["ratio"].tolist() == [2.0, 5.0]


def _reference(agg: str, window: float, rows: list[tuple[int, float, float]], card: int, t: float) -> float:
    inside = [a for (c, ts, a) in rows if c == card and t - window < ts <= t and not math.isnan(a)]
    if agg == "count":
        return float(len(inside))
    if agg == "sum":
        return float(sum(inside))
    if not inside:
        return math.nan
    return {"mean": sum(inside) / len(inside), "min": min(inside), "max": max(inside)}[agg]


_row = st.tuples(st.integers(0, 3), st.integers(0, 60), st.one_of(st.floats(-1e3, 1e3), st.just(math.nan)))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(_row, max_size=40),
    queries=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 70)), min_size=1, max_size=20),
    window=st.integers(1, 30),
    max_age=st.integers(1, 30),
)
def test_engine_matches_a_brute_force_reference(rows: list[tuple[int, int, float]], queries: list[tuple[int, int]], window: int, max_age: int) -> None:
    """On random rows and queries (ties, gaps, nulls, unknown entities) every aggregate and
    'latest' equal a row-by-row reference that only looks at the past."""
    aggs = ["count", "sum", "mean", "min", "max"]
    fs = _set(
        *(Window(a, agg=a, column="amount", window=window) for a in aggs),  # type: ignore[arg-type]
        Latest("last", column="amount", max_age=max_age),
    )
    source = _rows([r[0] for r in rows], [float(r[1]) for r in rows], [r[2] for r in rows]) if rows else _rows([], [], [])
    out = compute(fs, _ask([q[0] for q in queries], [float(q[1]) for q in queries]), source).columns
    flat = [(c, float(ts), a) for c, ts, a in rows]
    for i, (card, t) in enumerate(queries):
        for agg in aggs:
            expected = _reference(agg, float(window), flat, card, float(t))
            got = float(out[agg][i])
            assert (math.isnan(expected) and math.isnan(got)) or math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-6), (agg, card, t)
        past = [(ts, idx, a) for idx, (c, ts, a) in enumerate(flat) if c == card and ts <= t]
        if past:
            ts_last, _, value = max(past)
            expected_last = value if t - ts_last <= max_age else math.nan
        else:
            expected_last = math.nan
        got_last = float(out["last"][i])
        assert (math.isnan(expected_last) and math.isnan(got_last)) or got_last == expected_last, (card, t)


def _base_set(windows: list[int], max_age: int) -> FeatureSet:
    features: list[Any] = []
    for w in sorted(set(windows)):
        features.append(Window(f"n_{w}", agg="count", window=w))
        features.extend(Window(f"{agg}_{w}", agg=agg, column="amount", window=w) for agg in ("sum", "mean", "min", "max"))
    features += [
        Latest("last_seq", column="seq"),
        Latest("aged_seq", column="seq", max_age=max_age),
        Latest("aged_amount", column="amount", max_age=max_age, default=-1.0),
        Transform("double", inputs=["last_seq"], fn=lambda s: s * 2),
    ]
    return _set(*features)


def _rows_with_seq(rows: list[tuple[int, int, float]]) -> SourceRows:
    source = _rows([r[0] for r in rows], [float(r[1]) for r in rows], [r[2] for r in rows])
    source.columns["seq"] = np.arange(len(rows), dtype=np.float64)
    return source


def _equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(_row, max_size=30),
    queries=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 70)), min_size=1, max_size=6),
    windows=st.lists(st.integers(1, 30), min_size=1, max_size=2),
    max_age=st.integers(1, 30),
)
def test_values_hold_exactly_until_valid_until(rows: list[tuple[int, int, float]], queries: list[tuple[int, int]], windows: list[int], max_age: int) -> None:
    """A cached value is fresh until ``valid_until_ns``: recomputing at any instant from
    the query time up to it (every instant where anything could change is tried) gives the
    same base values, bit for bit; at ``valid_until_ns`` itself some value changes."""
    fs = _base_set(windows, max_age)
    source = _rows_with_seq(rows)
    asked = _ask([q[0] for q in queries], [float(q[1]) for q in queries])
    base = compute_base(fs, asked, source)
    assert "double" not in base.columns
    widths = [w * NS for w in set(windows)]
    marks = {int(ts) + d for ts in source.ts for d in (0, *widths, max_age * NS + 1)}
    for i, (card, _) in enumerate(queries):
        t = int(asked.ts[i])
        until = int(base.valid_until_ns[i])
        assert until > t
        if until != NEVER:
            assert until in marks
        points = sorted({t, *(p for p in marks if t <= p < until), *([until - 1] if until != NEVER else [])})
        again = compute_base(fs, _ask([card] * len(points), [p / NS for p in points]), source)
        for name, column in base.columns.items():
            expected = np.repeat(column[i : i + 1], len(points))
            assert _equal(again.columns[name], expected), (name, t, until, points)
        if until != NEVER:
            after = compute_base(fs, Queries(keys=[np.asarray([card])], ts=np.asarray([until], dtype=np.int64)), source)
            changed = [n for n, c in base.columns.items() if not _equal(after.columns[n], c[i : i + 1])]
            assert changed, (t, until)


def test_compute_is_compute_base_then_apply_transforms() -> None:
    """Training sets (compute) and the cached online path (base, then transforms per
    request) are one code path: the same columns either way."""
    fs = _set(
        Window("avg", agg="mean", column="amount", window="1d", default=0.0),
        Latest("last", column="amount", max_age="1h"),
        Transform("ratio", inputs=[TXN.amount, "avg"], fn=lambda a, m: a / np.maximum(m, 1.0)),
    )
    rows = _rows([1, 1, 2], [10.0, 20.0, 5.0], [10.0, 30.0, 7.0])
    asked = _ask([1, 2, 3], [30.0, 30.0, 30.0])
    request = {("txn", "amount"): np.asarray([40.0, 5.0, 1.0])}
    whole = compute(fs, asked, rows, request, ["ratio", "last"])
    base = compute_base(fs, asked, rows, ["ratio", "last"])
    split = apply_transforms(fs, base.columns, request, 3, ["ratio", "last"])
    assert split.keys() == whole.columns.keys() == {"avg", "last", "ratio"}
    for name in split:
        assert _equal(split[name], whole.columns[name])
    assert base.found.tolist() == [True, True, False]
    # Card 1: the row at 10 s leaves the 1-day window first, at 10 s + 1 d; the latest
    # (20 s) expires at 20 s + 1 h + 1 ns. Card 3 has no rows: nothing changes.
    assert base.valid_until_ns.tolist() == [20 * NS + 3600 * NS + 1, 5 * NS + 3600 * NS + 1, NEVER]
