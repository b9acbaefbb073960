"""How far a binned score can move when each cell's share is only known within an interval.

Sketch mode knows each cell's share within ``+-delta`` (the quantile sketch's rank error
on both edges of a bin, or the frequent-items sketch's count error). The per-cell terms of
PSI, Jensen-Shannon and Hellinger, ``f(p, q)``, are 0 where ``p = q``, grow as ``q`` moves
away from ``p`` on either side and as ``p`` moves away from ``q`` (quasi-convex in each
argument). So over a box ``[p-dp, p+dp] x [q-dq, q+dq]`` the largest term is at a corner
and the smallest is 0 when the intervals overlap, else at the two closest ends. Summing the
per-cell extremes bounds the score for *every* pair of distributions in the boxes
(conservative: it ignores that shares add up to 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

from stalwart.monitoring.scores import PSI_EPSILON

__all__ = ["Term", "hellinger_term", "interval_bound", "js_term", "linf_bound", "psi_term", "term_range"]

Array = np.ndarray[Any, Any]
Term = Callable[[Array, Array], Array]


def psi_term(p: Array, q: Array) -> Array:
    """PSI's cell term with the epsilon floor: ``(q' - p') ln(q' / p')``."""
    pp = np.maximum(p, PSI_EPSILON)
    qq = np.maximum(q, PSI_EPSILON)
    return np.asarray((qq - pp) * np.log(qq / pp))


def js_term(p: Array, q: Array) -> Array:
    """Jensen-Shannon divergence's cell term in bits (the distance is the sqrt of the sum)."""
    m = (p + q) / 2.0
    return np.asarray((special.rel_entr(p, m) + special.rel_entr(q, m)) / (2.0 * math.log(2.0)))


def hellinger_term(p: Array, q: Array) -> Array:
    """Hellinger's cell term ``(sqrt p - sqrt q)^2 / 2`` (the distance is the sqrt of the sum)."""
    return np.asarray(np.square(np.sqrt(p) - np.sqrt(q)) / 2.0)


def term_range(term: Term, p: Array, q: Array, dp: Array, dq: Array) -> tuple[float, float]:
    """Smallest and largest ``sum_i term(p_i, q_i)`` over the boxes, shares clipped to [0, 1]."""
    p_lo, p_hi = np.clip(p - dp, 0.0, 1.0), np.clip(p + dp, 0.0, 1.0)
    q_lo, q_hi = np.clip(q - dq, 0.0, 1.0), np.clip(q + dq, 0.0, 1.0)
    corners = np.stack([term(a, b) for a in (p_lo, p_hi) for b in (q_lo, q_hi)])
    high = corners.max(axis=0)
    above = q_lo > p_hi  # current's interval wholly above the reference's
    below = q_hi < p_lo
    low = np.zeros_like(p)
    if above.any():
        low[above] = term(p_hi[above], q_lo[above])
    if below.any():
        low[below] = term(p_lo[below], q_hi[below])
    return float(low.sum()), float(high.sum())


def interval_bound(
    score: float, term: Term, p: Array, q: Array, dp: Array, dq: Array, *, root: bool
) -> float:
    """The most the score (the sum of terms, or its square root) can be off.

    0 when no share is uncertain; ``root`` for scores that are the square root of the sum
    (Jensen-Shannon distance, Hellinger).
    """
    if not (np.any(dp) or np.any(dq)):
        return 0.0
    low, high = term_range(term, p, q, dp, dq)
    if root:
        low, high = math.sqrt(max(low, 0.0)), math.sqrt(max(high, 0.0))
    return max(score - low, high - score, 0.0)


def linf_bound(dp: Array, dq: Array) -> float:
    """``max_i |p_i - q_i|`` moves by at most ``max_i (dp_i + dq_i)``."""
    return float(np.max(dp + dq)) if dp.size else 0.0
