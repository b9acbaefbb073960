"""Anytime-valid comparisons of a canary with its primary, from running sums.

A rollout controller looks at its canary again and again; a fixed-sample test read at every
look rejects a true null far more often than its level (26 to 39 % of A/A runs at a 5 %
level over 200 looks; ``tests/rollout/test_sequential.py`` measures it). Every comparison
here stays valid however often it is read and whenever the controller stops.

**Method: one construction for every metric.** The difference ``d`` of two means (canary
minus primary) is judged with the normal-mixture sequential probability ratio test (mSPRT;
Robbins 1970; Johari, Koomen, Pekelis and Walsh, "Always valid inference", the approach
of Optimizely's and Eppo's sequential tests), with the variance of the difference
estimated from the data. Inverting that test gives the interval, which is then the
Gaussian-mixture *asymptotic confidence sequence* of Waudby-Smith, Arnold, Wu, Howard and
Ramdas (2021, "Time-uniform central limit theory and asymptotic confidence sequences"):
the same boundary, so a verdict's p-value is at most ``alpha`` exactly when its interval
excludes 0, and the two can never disagree. With ``d̂`` the observed difference, ``V`` its
estimated variance and ``τ`` the mixture's scale::

    V      = s_c² / n_c + s_p² / n_p
    log Λ  = ½ log(V / (V + τ²)) + τ² d̂² / (2 V (V + τ²))
    p      = min(1, 1 / Λ)                       (always-valid p-value for d = 0)
    CS     = d̂ ± sqrt( V (V + τ²) / τ² · (log((V + τ²) / V) + 2 log(1 / alpha)) )

By Ville's inequality the probability that ``p`` *ever* drops to ``alpha`` under ``d = 0``, or
that the interval *ever* misses the true ``d``, is at most ``alpha`` (asymptotically: the
variance is estimated). A controller may keep the running minimum of ``p`` and the running
intersection of the intervals (Johari et al.); both stay valid.

**Why this and not the alternatives.** It needs only each arm's count, sum and sum of
squares, so it costs O(1) memory per metric and arm, and a controller restarted from the
database recomputes it from SQL aggregates. Asymptotic confidence sequences need only a
finite variance, like the CLT; the non-asymptotic ones (Howard et al. 2021's
empirical-Bernstein boundaries, betting martingales) need known bounds on the data, which
latency does not have, and are wider. The price is that validity is asymptotic: each rule
declares a minimum count per arm below which a verdict is "inconclusive", and the tests
measure the false-positive rate at the sizes a rollout uses. The allocation between the
arms may change between looks (the canary's weight rises by step): the mixture is over the
information ``1 / V``, which grows with every observation whichever arm it lands in.

**The scale τ** is where the interval is tightest relative to its width: at the optimum
(``τ² ≈ 7.9 V`` for ``alpha = 0.05``) the half-width is about ``1.08 τ``. Rules set ``τ`` to
their tolerance by default, so the interval is sharpest just when it becomes narrow
enough to settle a pass or a fail against that tolerance.

**Metrics.** Rates (errors, degradations, validation violations, accuracy when labels
exist, tail-latency exceedances) are :class:`Proportion`: ``s²`` uses the Agresti-Caffo
adjusted rate ``(x + 1) / (n + 2)``, or the pooled rate of both arms where that gives more
variance, so that an arm with few or no events does not claim a certainty it lacks. Latency is compared as the mean of log-latency (a ratio of geometric means; the
log tames latency's heavy tail) and its tail as the rate of requests slower than a fixed
threshold, the primary's p99 before the step: a direct anytime-valid p99 difference needs
quantile confidence sequences for two samples, and the exceedance rate says what users
feel (one request in a hundred slower than before becomes two). Scores and log-latency are
:class:`Moments`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
import numpy as np
import numpy.typing as npt

from stalwart.errors import ConfigError

__all__ = [
    "Comparison",
    "Moments",
    "Proportion",
    "always_valid_p",
    "compare",
    "half_width",
    "mixture_log_lr",
    "two_means",
    "two_proportions",
]

FloatArray = npt.NDArray[np.float64]


class Proportion(msgspec.Struct, frozen=True):
    """One arm's rate: ``events`` out of ``n`` (errors out of requests, say)."""

    n: int = 0
    events: int = 0

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.events <= self.n:
            raise ConfigError(
                f"a proportion needs 0 <= events <= n, got events={self.events}, n={self.n}; "
                "count events among the same requests as n"
            )

    @property
    def rate(self) -> float | None:
        """``events / n``, or None before any observation."""
        return self.events / self.n if self.n else None

    def add(self, events: int, n: int) -> Proportion:
        """This arm with ``events`` more out of ``n`` more observations."""
        return Proportion(self.n + n, self.events + events)


class Moments(msgspec.Struct, frozen=True):
    """One arm's count, sum and sum of squares of a numeric metric (log-latency, a score).

    Float64 sums of squares lose nothing that matters for values of modest size (a score in
    [0, 1], a log of seconds); centre large values before summing them.
    """

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 0 or self.total_sq < 0 or not (math.isfinite(self.total) and math.isfinite(self.total_sq)):
            raise ConfigError(
                f"moments need n >= 0 and finite sums with total_sq >= 0, got n={self.n}, "
                f"total={self.total}, total_sq={self.total_sq}; drop non-finite values first"
            )

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        """The moments of ``values`` (finite numbers; a numpy array is read without copying)."""
        if isinstance(values, np.ndarray):
            array = np.asarray(values, dtype=np.float64).ravel()
        else:
            array = np.fromiter(values, dtype=np.float64)
        return cls(int(array.size), float(array.sum()), float(np.dot(array, array)))

    def merge(self, other: Moments) -> Moments:
        """Both sets of observations together (per replica, per minute bucket)."""
        return Moments(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float | None:
        """The sample mean, or None before any observation."""
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        """The unbiased sample variance, or None below two observations."""
        if self.n < 2:
            return None
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


class Comparison(msgspec.Struct, frozen=True):
    """Canary against primary on one metric at one look.

    ``effect`` is canary minus primary; ``lower``/``upper`` its anytime-valid interval at
    the level asked; ``z`` the effect over its standard error (for reading, not deciding);
    ``log_lr`` the mixture likelihood ratio's log, ``p_value`` the always-valid p-value for
    no difference (``min(1, 1/Λ)``).
    """

    canary: float
    primary: float
    effect: float
    lower: float
    upper: float
    z: float
    log_lr: float
    p_value: float


def mixture_log_lr(estimate: npt.ArrayLike, variance: npt.ArrayLike, scale: float) -> FloatArray:
    """``log Λ``: the normal-mixture likelihood ratio of ``d = 0`` against a ``N(0, scale²)``
    mixture of alternatives, for an estimate with the given variance (vectorised)."""
    d = np.asarray(estimate, dtype=np.float64)
    v = _floored(variance, scale)
    t2 = scale * scale
    return np.asarray(0.5 * np.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2)))


def always_valid_p(estimate: npt.ArrayLike, variance: npt.ArrayLike, scale: float) -> FloatArray:
    """``min(1, 1/Λ)``: the chance it ever reaches ``alpha`` under no difference is at most ``alpha``."""
    log_lr = mixture_log_lr(estimate, variance, scale)
    return np.asarray(np.exp(-np.maximum(log_lr, 0.0)))


def half_width(variance: npt.ArrayLike, scale: float, alpha: float) -> FloatArray:
    """The confidence sequence's half-width around the estimate (vectorised)."""
    _check_level(alpha, scale)
    v = _floored(variance, scale)
    t2 = scale * scale
    return np.asarray(np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) + 2.0 * math.log(1.0 / alpha))))


def two_proportions(
    events_c: npt.ArrayLike, n_c: npt.ArrayLike, events_p: npt.ArrayLike, n_p: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """``(d̂, V)`` for two rates, canary minus primary; every ``n`` must be at least 1."""
    xc, nc = np.asarray(events_c, np.float64), np.asarray(n_c, np.float64)
    xp, np_ = np.asarray(events_p, np.float64), np.asarray(n_p, np.float64)
    estimate = xc / nc - xp / np_
    # Each arm's variance is the larger of its own (Agresti-Caffo: one pseudo-event and one
    # pseudo-non-event, so 0 errors out of 300 is not a rate known exactly) and the pooled
    # one. A small canary arm with a rare event often shows none; its own estimate then
    # understates its variance, and A/A runs at 1 % with the canary at 10 % of traffic
    # crossed alpha (0.0505) with the own estimate alone; the pooled one alone is too
    # narrow once the arms really differ.
    ac, ap = (xc + 1.0) / (nc + 2.0), (xp + 1.0) / (np_ + 2.0)
    pooled = (xc + xp + 1.0) / (nc + np_ + 2.0)
    floor = pooled * (1.0 - pooled)
    variance = np.maximum(ac * (1.0 - ac), floor) / nc + np.maximum(ap * (1.0 - ap), floor) / np_
    return np.asarray(estimate), np.asarray(variance)


def two_means(
    n_c: npt.ArrayLike,
    total_c: npt.ArrayLike,
    total_sq_c: npt.ArrayLike,
    n_p: npt.ArrayLike,
    total_p: npt.ArrayLike,
    total_sq_p: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """``(d̂, V)`` for two means from counts, sums and sums of squares; every ``n`` >= 2."""
    nc, np_ = np.asarray(n_c, np.float64), np.asarray(n_p, np.float64)
    mc, mp = np.asarray(total_c, np.float64) / nc, np.asarray(total_p, np.float64) / np_
    vc = np.maximum(0.0, np.asarray(total_sq_c, np.float64) - mc * mc * nc) / (nc - 1.0)
    vp = np.maximum(0.0, np.asarray(total_sq_p, np.float64) - mp * mp * np_) / (np_ - 1.0)
    return np.asarray(mc - mp), np.asarray(vc / nc + vp / np_)


def compare(
    canary: Proportion | Moments, primary: Proportion | Moments, *, alpha: float, scale: float
) -> Comparison | None:
    """The anytime-valid comparison of one look, or None while an arm is too small to
    estimate at all (no observation for a rate, fewer than two for a mean)."""
    _check_level(alpha, scale)
    if isinstance(canary, Proportion) and isinstance(primary, Proportion):
        if canary.n < 1 or primary.n < 1:
            return None
        est, var = two_proportions(canary.events, canary.n, primary.events, primary.n)
        values = (canary.events / canary.n, primary.events / primary.n)
    elif isinstance(canary, Moments) and isinstance(primary, Moments):
        if canary.n < 2 or primary.n < 2:
            return None
        est, var = two_means(canary.n, canary.total, canary.total_sq, primary.n, primary.total, primary.total_sq)
        values = (canary.total / canary.n, primary.total / primary.n)
    else:
        raise ConfigError(
            f"compare needs two Proportions or two Moments, got {type(canary).__name__} "
            f"and {type(primary).__name__}"
        )
    effect, v = float(est), float(var)
    width = float(half_width(v, scale, alpha))
    log_lr = float(mixture_log_lr(effect, v, scale))
    sd = math.sqrt(float(_floored(v, scale)))
    return Comparison(
        canary=values[0],
        primary=values[1],
        effect=effect,
        lower=effect - width,
        upper=effect + width,
        z=effect / sd,
        log_lr=log_lr,
        p_value=math.exp(-max(log_lr, 0.0)),
    )


def _floored(variance: npt.ArrayLike, scale: float) -> FloatArray:
    # Two arms of identical constants have V = 0; a floor far below the scale keeps the
    # formulas finite without moving any interval that matters.
    floor = (1e-9 * scale) ** 2
    return np.asarray(np.maximum(np.asarray(variance, dtype=np.float64), floor))


def _check_level(alpha: float, scale: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha!r} must be in (0, 1); 0.05 is usual")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ConfigError(f"the mixture scale {scale!r} must be a positive number; it defaults to the tolerance")
