"""Drift scores: one function per score, each named for the formula it computes.

Binned scores take counts (or shares) on shared cells, aligned by position: reference
deciles for numbers, categories for strings (``stalwart.monitoring.drift`` builds the
cells). Sample scores (KS, Wasserstein) take the raw finite values. Every function equals
its scipy counterpart on the same input to floating-point rounding; ``docs/monitoring.md``
("Drift scores") lists the formulas and which scipy function each one matches.

>>> round(js_distance([1, 0], [0, 1]), 12)
1.0
>>> psi([50, 50], [50, 50])
0.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from scipy import special, stats

from stalwart.errors import ConfigError

__all__ = [
    "KS_EXACT_MAX_N",
    "PSI_EPSILON",
    "chi2",
    "hellinger",
    "js_distance",
    "ks",
    "ks_sorted",
    "linf",
    "new_category_share",
    "proportion_z",
    "psi",
    "wasserstein_normed",
    "wasserstein_sorted",
]

PSI_EPSILON = 1e-4
"""Shares below this are raised to it before PSI's logarithm (an empty cell is not -inf)."""

KS_EXACT_MAX_N = 10_000
"""Up to this many values per side the KS p-value is exact (as scipy's ``method='auto'``)."""

Array = np.ndarray[Any, Any]


def psi(ref_counts: Any, cur_counts: Any, eps: float = PSI_EPSILON) -> float:
    """Population stability index on shared cells.

    ``PSI = sum_i (q_i - p_i) * ln(q_i / p_i)`` with ``p_i = max(ref_i / sum(ref), eps)``
    and ``q_i = max(cur_i / sum(cur), eps)`` (natural log; shares are not renormalised
    after the floor). 0 for equal distributions; unbounded above.
    """
    p, q = _shares(ref_counts, cur_counts)
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(p: Any, q: Any) -> float:
    """Jensen-Shannon distance, base 2, in [0, 1].

    ``sqrt((KL(p || m) + KL(q || m)) / 2)`` with ``m = (p + q) / 2`` and KL in bits, after
    normalising ``p`` and ``q`` to sum to 1; equals
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.
    """
    pp, qq = _shares(p, q)
    m = (pp + qq) / 2.0
    left = special.rel_entr(pp, m).sum()
    right = special.rel_entr(qq, m).sum()
    js = (left + right) / math.log(2.0)
    return float(math.sqrt(max(js / 2.0, 0.0)))


def hellinger(p: Any, q: Any) -> float:
    """Hellinger distance in [0, 1]: ``sqrt(sum_i (sqrt(p_i) - sqrt(q_i))**2 / 2)``.

    ``p`` and ``q`` are normalised to sum to 1 first (equal to ``sqrt(1 - sum sqrt(p q))``
    in exact arithmetic; this form has no cancellation near 0).
    """
    pp, qq = _shares(p, q)
    return float(math.sqrt(np.sum(np.square(np.sqrt(pp) - np.sqrt(qq))) / 2.0))


def linf(p: Any, q: Any) -> float:
    """L-infinity distance of the normalised distributions: ``max_i |p_i - q_i|``.

    TensorFlow Data Validation's categorical drift/skew comparator.
    """
    pp, qq = _shares(p, q)
    return float(np.max(np.abs(pp - qq))) if pp.size else 0.0


def chi2(ref_counts: Any, cur_counts: Any) -> tuple[float, float]:
    """Pearson's chi-squared test of homogeneity on the 2 x k table of counts.

    Rows are the reference and the current counts; expected counts are
    ``row_total * column_total / grand_total``; ``k - 1`` degrees of freedom; no Yates
    correction. Equals ``scipy.stats.chi2_contingency([ref, cur], correction=False)``
    once cells empty on both sides are dropped. Unlike a goodness-of-fit test against the
    reference's shares, it is defined when the current sample has a category the
    reference never had. Returns ``(statistic, p_value)``; ``(0.0, 1.0)`` with fewer than
    two non-empty cells.
    """
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    _same_cells(ref, cur)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n_ref, n_cur = ref.sum(), cur.sum()
    if ref.size < 2 or n_ref == 0 or n_cur == 0:
        return 0.0, 1.0
    total = n_ref + n_cur
    column = ref + cur
    expected_ref = column * (n_ref / total)
    expected_cur = column * (n_cur / total)
    statistic = float(
        np.sum(np.square(ref - expected_ref) / expected_ref)
        + np.sum(np.square(cur - expected_cur) / expected_cur)
    )
    # special.chdtrc is what stats.chi2.sf evaluates, without its per-call overhead.
    return statistic, float(special.chdtrc(ref.size - 1, statistic))


def proportion_z(ref_hits: float, ref_n: float, cur_hits: float, cur_n: float) -> tuple[float, float]:
    """Two-proportion z-test (pooled variance), two-sided: ``(z, p_value)``.

    ``z = (h_c/n_c - h_r/n_r) / sqrt(s (1 - s) (1/n_r + 1/n_c))`` with the pooled share
    ``s = (h_r + h_c) / (n_r + n_c)``; ``p = 2 * (1 - Phi(|z|))``. ``z**2`` is the 2 x 2
    :func:`chi2` statistic and the p-values agree. ``(0.0, 1.0)`` when ``s`` is 0 or 1.
    """
    if ref_n <= 0 or cur_n <= 0:
        return 0.0, 1.0
    pooled = (ref_hits + cur_hits) / (ref_n + cur_n)
    spread = pooled * (1.0 - pooled) * (1.0 / ref_n + 1.0 / cur_n)
    if spread <= 0.0:
        return 0.0, 1.0
    z = (cur_hits / cur_n - ref_hits / ref_n) / math.sqrt(spread)
    return z, float(2.0 * special.ndtr(-abs(z)))  # stats.norm.sf(|z|), without its overhead


def ks(ref: Any, cur: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test, two-sided: ``(D, p_value)``.

    ``D = sup_x |F_ref(x) - F_cur(x)|`` over the empirical CDFs. The p-value is exact up to
    :data:`KS_EXACT_MAX_N` values per side, else Smirnov's asymptotic
    ``kstwo.sf(D, round(n m / (n + m)))``: both as ``scipy.stats.ks_2samp(ref, cur)``.
    """
    return ks_sorted(np.sort(_finite(ref)), np.sort(_finite(cur)))


def ks_sorted(ref: Array, cur: Array) -> tuple[float, float]:
    """:func:`ks` on values already sorted ascending (no copy, no sort)."""
    n1, n2 = int(ref.size), int(cur.size)
    if not n1 or not n2:
        raise ConfigError("the KS test needs at least one value on each side; the column has none")
    if max(n1, n2) <= KS_EXACT_MAX_N:
        with warnings.catch_warnings():
            # scipy falls back to the asymptotic p-value itself when its exact recursion
            # does not converge, and says so in a warning; the result is still scipy's.
            warnings.filterwarnings("ignore", "ks_2samp: Exact calculation unsuccessful", RuntimeWarning)
            result = stats.ks_2samp(ref, cur)
        return float(result.statistic), float(result.pvalue)
    # The CDFs only change at data points, so the supremum is at the last copy of some
    # value of either sample: there one CDF is (index + 1) / n, the other a search away.
    d = max(_ks_side(ref, cur, n1, n2), _ks_side(cur, ref, n2, n1))
    m, n = max(n1, n2), min(n1, n2)
    p = float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))
    return d, p


def wasserstein_normed(ref: Any, cur: Any) -> float:
    """Wasserstein-1 distance divided by the reference's standard deviation (ddof 0).

    ``W1 = integral |F_ref(x) - F_cur(x)| dx`` (equal to
    ``scipy.stats.wasserstein_distance(ref, cur)``), then ``W1 / std(ref)``; a constant
    reference gives 0 when W1 is 0 and ``inf`` otherwise.
    """
    ref_sorted = np.sort(_finite(ref))
    return _normed(wasserstein_sorted(ref_sorted, np.sort(_finite(cur))), float(np.std(ref_sorted)))


def wasserstein_sorted(ref: Array, cur: Array) -> float:
    """Wasserstein-1 distance of two samples sorted ascending, in linear time.

    ``W1 = integral_0^1 |Q_ref(u) - Q_cur(u)| du``: the quantile functions are steps at
    ``i/n`` and ``j/m``, merged by integer arithmetic over the common denominator
    ``n * m`` instead of a sort.
    """
    n1, n2 = int(ref.size), int(cur.size)
    if not n1 or not n2:
        raise ConfigError("the Wasserstein distance needs values on both sides; the column has none")
    if n1 == n2:
        return float(np.mean(np.abs(ref - cur)))
    i = np.arange(1, n1 + 1, dtype=np.int64)
    j = np.arange(1, n2 + 1, dtype=np.int64)
    points = np.empty(n1 + n2, dtype=np.int64)  # step ends, in units of 1/(n1*n2)
    # Position of each step end in the merged order: its own index plus the other
    # sample's step ends before it (ties: reference first; a tie adds a 0-length step).
    points[(i - 1) + (i * n2 - 1) // n1] = i * n2
    points[(j - 1) + (j * n1) // n2] = j * n1
    widths = np.diff(points, prepend=0)
    ref_at = (points + n2 - 1) // n2 - 1  # Q_ref on (previous, point]: ref[ceil(u n1) - 1]
    cur_at = (points + n1 - 1) // n1 - 1
    return float(np.dot(widths, np.abs(ref[ref_at] - cur[cur_at])) / (n1 * n2))


def new_category_share(ref_cats: Collection[str], cur_counts: Mapping[str, int]) -> float:
    """Share of current values whose category the reference never had.

    ``sum(cur[c] for c not in ref_cats) / sum(cur)``; 0 for an empty current sample.
    """
    total = sum(cur_counts.values())
    if not total:
        return 0.0
    known = ref_cats if isinstance(ref_cats, (set, frozenset, Mapping)) else set(ref_cats)
    return sum(n for c, n in cur_counts.items() if c not in known) / total


# -- private helpers ------------------------------------------------------------------


def _shares(p: Any, q: Any) -> tuple[Array, Array]:
    pp = np.asarray(p, dtype=np.float64)
    qq = np.asarray(q, dtype=np.float64)
    _same_cells(pp, qq)
    if (pp < 0).any() or (qq < 0).any():
        raise ConfigError("counts must not be negative")
    sp, sq = pp.sum(), qq.sum()
    if sp <= 0 or sq <= 0:
        raise ConfigError("a distribution needs a positive total on each side; one side is empty")
    return pp / sp, qq / sq


def _same_cells(p: Array, q: Array) -> None:
    if p.shape != q.shape or p.ndim != 1:
        raise ConfigError(
            f"reference and current counts must be 1-D and aligned cell by cell; got shapes "
            f"{list(p.shape)} and {list(q.shape)}"
        )


def _finite(values: Any) -> Array:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array if np.isfinite(array).all() else array[np.isfinite(array)]


def _ks_side(a: Array, b: Array, na: int, nb: int) -> float:
    """max |F_a - F_b| over the distinct values of ``a`` (sorted), at each value's last copy."""
    last = np.flatnonzero(np.append(a[1:] != a[:-1], True))
    f_a = (last + 1) / na
    f_b = np.searchsorted(b, a[last], side="right") / nb
    return float(np.max(np.abs(f_a - f_b)))


def _normed(distance: float, scale: float) -> float:
    if scale > 0.0:
        return distance / scale
    return 0.0 if distance == 0.0 else math.inf
