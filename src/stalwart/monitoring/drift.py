"""Drift of one column or a dataset: a score, its threshold, the verdict and its error.

Two modes, one result type. **Exact mode** reads raw values (numpy arrays, lists, Series;
a mapping of them for a dataset) and equals scipy on the same data. **Sketch mode** reads
:class:`~stalwart.monitoring.profiles.FeatureProfile`\\ s (a
:class:`~stalwart.monitoring.profiles.Profile` for a dataset): the KLL quantile sketch for
numbers, frequent items for categories; ``error_bound`` says how far the score can be from
exact mode's score on the same cells, at the sketch's stated confidence.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> d = column_drift(rng.normal(size=500), rng.normal(1.0, size=500), column="amount")
>>> d.method, d.drifted, d.p_value < 0.05
('ks', True, True)

Cells: numbers are binned on the reference's deciles (the k-th decile is the smallest
value with at least k/10 of the reference at or below it; bins are ``(e_{k-1}, e_k]``,
duplicate edges merged), categories are the union of both sides' categories. The
default method per column follows Evidently's rule (:func:`default_method`); the formulas,
thresholds and sketch bounds are in ``docs/monitoring.md`` ("Drift scores").
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from scipy import special

from stalwart.errors import ConfigError
from stalwart.monitoring import drift_bounds as bounds
from stalwart.monitoring import scores
from stalwart.monitoring.drift_inputs import Kind, Side, side_of_profile, side_of_values
from stalwart.monitoring.profiles import FeatureProfile, Profile

__all__ = [
    "DEFAULT_SHARE",
    "DEFAULT_THRESHOLDS",
    "METHODS",
    "P_VALUE_METHODS",
    "ColumnDrift",
    "DatasetDrift",
    "column_drift",
    "column_drifts",
    "dataset_drift",
    "default_method",
    "prepare_reference",
]

METHODS = ("psi", "js", "ks", "wasserstein", "hellinger", "chi2", "linf", "z")
"""Every method a column can be scored by; ``ks`` and ``wasserstein`` need numbers."""

P_VALUE_METHODS = frozenset(("ks", "chi2", "z"))
"""Tests: drift when the p-value is below the threshold. The others: score >= threshold."""

DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "ks": 0.05,
    "chi2": 0.05,
    "z": 0.05,
    "wasserstein": 0.1,
    "js": 0.1,
    "psi": 0.1,
    "hellinger": 0.1,
    "linf": 0.1,
}

DEFAULT_SHARE = 0.5
"""A dataset drifts when at least this share of its columns drift (Evidently's default)."""

SMALL_REFERENCE = 1000  # up to this many reference values, tests; above, distances
FEW_VALUES = 5  # numbers with at most this many distinct values are scored as categories
_NUMERIC_ONLY = frozenset(("ks", "wasserstein"))
_PARALLEL_MIN_VALUES = 200_000  # below this many values a dataset is scored on one thread

Mode = Literal["exact", "sketch"]
Array = np.ndarray[Any, Any]
_Cells = tuple[Array, Array, Array, Array, tuple[float, ...]]  # counts, share errors, edges


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    """One column's drift verdict.

    ``score`` is the method's statistic (KS's D, chi-squared's statistic, the z-test's z,
    or the distance); ``p_value`` is set for the tests (``ks``, ``chi2``, ``z``). A side
    without values scores NaN and never drifts. ``edges`` are the numeric bins' inner
    edges (empty for categories and for KS/Wasserstein).
    """

    column: str
    kind: Kind
    method: str
    score: float
    p_value: float | None
    threshold: float
    drifted: bool
    reference_count: int
    current_count: int
    missing_reference: float
    missing_current: float
    out_of_schema: float
    mode: Mode
    error_bound: float
    edges: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data: NaN and infinities (no score, no bound) become None."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class DatasetDrift:
    """Every column's verdict and the dataset's: drifted when ``share >= threshold``."""

    columns: tuple[ColumnDrift, ...]
    share: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data, columns as a list in reference order."""
        return {
            "columns": [c.to_dict() for c in self.columns],
            "share": self.share,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }


def default_method(kind: Kind, reference_size: int, n_unique: int | None = None) -> str:
    """The method a column is scored by when none is named (Evidently's rule).

    ``reference_size`` counts the reference's present values, ``n_unique`` the distinct
    values of both sides together (None: many).

    ========================  =======================  =========================
    column                    reference <= 1000        reference > 1000
    ========================  =======================  =========================
    numeric, > 5 distinct     ``ks`` (p < 0.05)        ``wasserstein`` (>= 0.1)
    numeric, 3-5 distinct     ``chi2`` (p < 0.05)      ``js`` (>= 0.1)
    categorical, > 2 values   ``chi2`` (p < 0.05)      ``js`` (>= 0.1)
    any, <= 2 values          ``z`` (p < 0.05)         ``js`` (>= 0.1)
    ========================  =======================  =========================
    """
    few = n_unique is not None and n_unique <= FEW_VALUES
    binary = n_unique is not None and n_unique <= 2
    if reference_size <= SMALL_REFERENCE:
        if binary:
            return "z"
        return "chi2" if kind == "categorical" or few else "ks"
    return "js" if kind == "categorical" or few else "wasserstein"


def column_drift(
    reference: object,
    current: object,
    *,
    column: str = "",
    method: str | None = None,
    threshold: float | None = None,
) -> ColumnDrift:
    """Score one column's drift from ``reference`` to ``current``.

    Exact mode: raw values on both sides. Sketch mode: a ``FeatureProfile`` on both sides.
    ``method`` None picks :func:`default_method`; ``threshold`` None the method's default
    (:data:`DEFAULT_THRESHOLDS`). The column's kind follows the reference.
    """
    ref_side, cur_side = _sides(reference, current, column)
    return _compare(column, ref_side, cur_side, method, threshold)


def column_drifts(
    reference: object,
    current: object,
    *,
    column: str = "",
    methods: Sequence[str] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> tuple[ColumnDrift, ...]:
    """One column scored by several methods, reading each side once.

    ``methods`` None: every method that applies to the column's kind (for a report's
    table of scores). ``thresholds`` by method; absent ones take the defaults.
    """
    ref_side, cur_side = _sides(reference, current, column)
    chosen = methods or [m for m in METHODS if ref_side.kind == "numeric" or m not in _NUMERIC_ONLY]
    limits = thresholds or {}
    cells: list[_Cells] = []  # built by the first binned method, shared by the others
    return tuple(_compare(column, ref_side, cur_side, m, limits.get(m), cells) for m in chosen)


def dataset_drift(
    reference: Mapping[str, Any] | Profile,
    current: Mapping[str, Any] | Profile,
    *,
    methods: str | Mapping[str, str] | None = None,
    thresholds: float | Mapping[str, float] | None = None,
    share: float = DEFAULT_SHARE,
) -> DatasetDrift:
    """Score every reference column; the dataset drifts when ``share`` of them drift.

    Exact mode: mappings of column name to raw values (or :func:`prepare_reference`'s
    result for the reference). Sketch mode: two ``Profile``\\ s. ``methods`` and
    ``thresholds`` are one value for every column or a mapping by column (absent columns
    take the defaults). Columns are scored in parallel threads when the data is large.
    """
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"share={share} must be in (0, 1]: the share of drifted columns that flags the dataset")
    missing = [name for name in reference if name not in current]
    if missing:
        raise ConfigError(
            f"current data has no column {', '.join(map(repr, missing))}; give every reference column"
        )
    names = list(reference)

    def one(name: str) -> ColumnDrift:
        ref_side, cur_side = _sides(reference[name], current[name], name)
        return _compare(name, ref_side, cur_side, _per_column(methods, name), _per_column(thresholds, name))

    results = tuple(_map(one, names, _size(reference) + _size(current)))
    drifted = sum(r.drifted for r in results)
    fraction = drifted / len(results) if results else 0.0
    return DatasetDrift(results, fraction, share, bool(results) and fraction >= share)


def prepare_reference(reference: Mapping[str, Any] | Profile) -> dict[str, Side]:
    """The reference read once (raw columns sorted and counted, or profiles' sketches
    unpacked), for scoring many windows against it.

    Pass the result (or one of its values) to :func:`dataset_drift`,
    :func:`column_drift` or :func:`column_drifts` in place of the reference: the scores
    are the same, the reference is not read again per window.
    """
    names = list(reference)
    if isinstance(reference, Profile):
        return {name: side_of_profile(reference[name]) for name in names}
    sides = _map(lambda name: side_of_values(reference[name]), names, _size(reference))
    return dict(zip(names, sides, strict=True))


# -- comparing two sides --------------------------------------------------------------


def _sides(reference: object, current: object, column: str) -> tuple[Side, Side]:
    if isinstance(reference, Side):
        if (reference.mode == "sketch") != isinstance(current, FeatureProfile):
            raise ConfigError(
                f"column {column!r}: a reference prepared from {'profiles' if reference.mode == 'sketch' else 'values'} "
                f"compares with {'a profile' if reference.mode == 'sketch' else 'values'}, not a {type(current).__name__}"
            )
        if isinstance(current, FeatureProfile):
            return reference, side_of_profile(current, reference.kind)
        return reference, side_of_values(current, reference.kind)
    if isinstance(reference, FeatureProfile) != isinstance(current, FeatureProfile):
        raise ConfigError(
            f"column {column!r}: compare a profile with a profile or values with values, "
            f"not a {type(reference).__name__} with a {type(current).__name__}"
        )
    if isinstance(reference, FeatureProfile) and isinstance(current, FeatureProfile):
        ref_side = side_of_profile(reference)
        return ref_side, side_of_profile(current, ref_side.kind)
    ref_side = side_of_values(reference)
    return ref_side, side_of_values(current, ref_side.kind)


def _compare(
    column: str,
    ref: Side,
    cur: Side,
    method: str | None,
    threshold: float | None,
    cells: list[_Cells] | None = None,
) -> ColumnDrift:
    chosen = method or default_method(ref.kind, ref.present, _n_unique(ref, cur))
    if chosen not in METHODS:
        raise ConfigError(f"column {column!r}: unknown drift method {chosen!r}; choose one of {', '.join(METHODS)}")
    if chosen in _NUMERIC_ONLY and ref.kind != "numeric":
        raise ConfigError(f"column {column!r}: {chosen} needs numbers; use chi2, js, psi, hellinger or linf for categories")
    limit = DEFAULT_THRESHOLDS[chosen] if threshold is None else float(threshold)
    if not math.isfinite(limit) or limit < 0:
        raise ConfigError(f"column {column!r}: threshold={threshold} must be a finite number >= 0")
    score, p_value, bound, edges = _score(chosen, ref, cur, [] if cells is None else cells)
    if chosen in P_VALUE_METHODS:
        drifted = p_value is not None and p_value < limit
    else:
        drifted = not math.isnan(score) and score >= limit
    return ColumnDrift(
        column=column,
        kind=ref.kind,
        method=chosen,
        score=score,
        p_value=p_value,
        threshold=limit,
        drifted=bool(drifted),
        reference_count=ref.count,
        current_count=cur.count,
        missing_reference=ref.missing / ref.count if ref.count else 0.0,
        missing_current=cur.missing / cur.count if cur.count else 0.0,
        out_of_schema=_out_of_schema(ref, cur),
        mode=cur.mode,
        error_bound=bound,
        edges=edges,
    )


def _score(
    method: str, ref: Side, cur: Side, cells: list[_Cells]
) -> tuple[float, float | None, float, tuple[float, ...]]:
    """(score, p-value, error bound, numeric edges) of one method; ``cells`` caches the cells."""
    if ref.present == 0 or cur.present == 0:
        return math.nan, None, 0.0, ()
    exact = ref.exact and cur.exact
    if method == "ks":
        d, p = _ks(ref, cur)
        return d, p, ref.rank_error + cur.rank_error, ()
    if method == "wasserstein":
        score, bound = _wasserstein(ref, cur)
        return score, None, bound, ()
    if not cells:
        cells.append(_cells(ref, cur))
    ref_counts, cur_counts, dp, dq, edges = cells[0]
    p, q = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    if method == "psi":
        s = scores.psi(ref_counts, cur_counts)
        return s, None, bounds.interval_bound(s, bounds.psi_term, p, q, dp, dq, root=False), edges
    if method == "js":
        s = scores.js_distance(ref_counts, cur_counts)
        return s, None, bounds.interval_bound(s, bounds.js_term, p, q, dp, dq, root=True), edges
    if method == "hellinger":
        s = scores.hellinger(ref_counts, cur_counts)
        return s, None, bounds.interval_bound(s, bounds.hellinger_term, p, q, dp, dq, root=True), edges
    if method == "linf":
        return scores.linf(ref_counts, cur_counts), None, bounds.linf_bound(dp, dq), edges
    # Tests on counts: a p-value has no useful bound from a sketch's count error.
    inexact = 0.0 if exact else math.inf
    if method == "chi2":
        statistic, pv = scores.chi2(ref_counts, cur_counts)
        return statistic, pv, inexact, edges
    z, pv = scores.proportion_z(
        float(ref_counts[0]), float(ref_counts.sum()), float(cur_counts[0]), float(cur_counts.sum())
    )
    return z, pv, inexact, edges


def _ks(ref: Side, cur: Side) -> tuple[float, float]:
    if ref.weights is None and cur.weights is None:
        return scores.ks_sorted(ref.values, cur.values)
    # The sketches' CDFs are steps at their retained numbers: the supremum of the
    # difference is at one of them. The p-value is Kolmogorov's limiting distribution at
    # sqrt(n m / (n + m)) D for the true sizes: the statistic is approximate anyway, and
    # scipy's finite-n distribution (kstwo) costs up to seconds per call at these sizes.
    points = np.union1d(ref.unique_values(), cur.unique_values())
    d = float(np.max(np.abs(_cdf(ref, points) - _cdf(cur, points))))
    n1, n2 = ref.present, cur.present
    # special.kolmogorov is stats.kstwobign.sf without its per-call overhead.
    return d, float(np.clip(special.kolmogorov(d * math.sqrt(n1 * n2 / (n1 + n2))), 0.0, 1.0))


def _wasserstein(ref: Side, cur: Side) -> tuple[float, float]:
    if ref.weights is None and cur.weights is None:
        distance = scores.wasserstein_sorted(ref.values, cur.values)
    else:
        # W1 of the sketches' step CDFs: integral |F_ref - F_cur| dx over their retained numbers.
        points = np.union1d(ref.values, cur.values)
        gaps = np.diff(points)
        distance = float(np.dot(np.abs(_cdf(ref, points[:-1]) - _cdf(cur, points[:-1])), gaps))
    variance = ref.variance
    if variance is None:  # a profile stored before variances were kept: estimate, no bound
        weights = ref.weights if ref.weights is not None else np.ones_like(ref.values)
        mean = float(np.average(ref.values, weights=weights))
        variance = float(np.average(np.square(ref.values - mean), weights=weights))
        return _normed(distance, math.sqrt(variance)), math.inf
    scale = math.sqrt(variance)
    # integral |F_sketch - F| dx <= rank error * (max - min) on each side.
    spread = sum(s.rank_error * _width(s) for s in (ref, cur) if s.rank_error)
    if spread == 0.0:
        return _normed(distance, scale), 0.0
    return _normed(distance, scale), (spread / scale if scale > 0 else math.inf)


def _cells(ref: Side, cur: Side) -> _Cells:
    """Counts per cell on both sides, each share's uncertainty, and the numeric edges."""
    if ref.kind == "numeric":
        edges = _deciles(ref)
        ref_counts, dp = _binned(ref, edges)
        cur_counts, dq = _binned(cur, edges)
        return ref_counts, cur_counts, dp, dq, tuple(float(e) for e in edges)
    names = sorted(set(ref.counts) | set(cur.counts), key=lambda c: (-ref.counts.get(c, 0), c))
    ref_counts, dp = _categorised(ref, names)
    cur_counts, dq = _categorised(cur, names)
    if ref.count_error or cur.count_error:  # the rest of an inexact sketch's mass
        ref_counts, cur_counts = np.append(ref_counts, 0.0), np.append(cur_counts, 0.0)
        for counts, side in ((ref_counts, ref), (cur_counts, cur)):
            counts[-1] = max(side.present - counts[:-1].sum(), 0.0)
        dp, dq = np.append(dp, dp.sum()), np.append(dq, dq.sum())
    return ref_counts, cur_counts, dp, dq, ()


def _deciles(side: Side) -> Array:
    cumulative = side.cumulative()
    n = cumulative[-1]
    # First index with at least k/10 of the weight at or below it, in integers (10 * cum
    # >= k * n) so that 0.7 * 10 never rounds to 7.000000000000001.
    at = np.searchsorted(10.0 * cumulative, np.arange(1, 10) * n, side="left")
    return np.unique(side.values[np.minimum(at, side.values.size - 1)])


def _binned(side: Side, edges: Array) -> tuple[Array, Array]:
    cumulative = side.cumulative()
    at = np.searchsorted(side.values, edges, side="right")
    below = np.where(at > 0, cumulative[np.maximum(at - 1, 0)], 0.0)
    counts = np.diff(np.concatenate(([0.0], below, [cumulative[-1]])))
    # Each edge's cumulative share is off by at most the rank error: one edge bounds the
    # first and last bins, two bound the others.
    sides = np.full(counts.size, 2.0)
    sides[[0, -1]] = 1.0
    return counts, (sides * side.rank_error if edges.size else np.zeros(counts.size))


def _categorised(side: Side, names: list[str]) -> tuple[Array, Array]:
    counts = np.array([side.counts.get(name, 0) for name in names], dtype=np.float64)
    present = side.present or 1
    return counts, np.full(counts.size, side.count_error / present)


def _cdf(side: Side, points: Array) -> Array:
    cumulative = side.cumulative()
    at = np.searchsorted(side.values, points, side="right")
    return np.asarray(np.where(at > 0, cumulative[np.maximum(at - 1, 0)], 0.0) / cumulative[-1])


def _n_unique(ref: Side, cur: Side) -> int | None:
    if ref.kind == "categorical":
        return len(set(ref.counts) | set(cur.counts))
    ref_unique = ref.unique_values()
    if ref_unique.size > FEW_VALUES:
        return int(ref_unique.size)
    return int(np.union1d(ref_unique, cur.unique_values()).size)


def _out_of_schema(ref: Side, cur: Side) -> float:
    if not cur.count:
        return 0.0
    unexpected = cur.unexpected
    if ref.kind == "categorical" and cur.kind == "categorical":
        unexpected += sum(n for c, n in cur.counts.items() if c not in ref.counts)
    return unexpected / cur.count


# -- small helpers --------------------------------------------------------------------


def _per_column(option: Any, name: str) -> Any:
    if isinstance(option, Mapping):
        return option.get(name)
    return option


def _size(data: Mapping[str, Any] | Profile) -> int:
    if isinstance(data, Profile):
        return 0  # sketches are small: no threads
    total = 0
    for values in data.values():
        if isinstance(values, Side):
            total += values.present if values.mode == "exact" else 0
        elif hasattr(values, "__len__"):
            total += len(values)
    return total


def _map(fn: Any, names: list[str], size: int) -> Iterator[Any]:
    workers = min(os.cpu_count() or 1, len(names), 8)
    if size < _PARALLEL_MIN_VALUES or workers < 2:
        return map(fn, names)
    # numpy sorts and searches without the GIL, so columns score in parallel threads.
    with ThreadPoolExecutor(workers, thread_name_prefix="stalwart-drift") as pool:
        return iter(list(pool.map(fn, names)))


def _width(side: Side) -> float:
    width = side.high - side.low
    return width if math.isfinite(width) else math.inf


def _normed(distance: float, scale: float) -> float:
    if scale > 0.0:
        return distance / scale
    return 0.0 if distance == 0.0 else math.inf


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    return value
